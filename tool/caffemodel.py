"""Read the weight blobs of a Caffe `.caffemodel` (a NetParameter protobuf) without Caffe or generated classes.

A minimal protobuf wire-format decoder for the few fields needed, numbered as in the public caffe.proto:
    NetParameter:     name 1, layers 2 (V1LayerParameter, old files such as DeepLab's), layer 100 (LayerParameter)
    LayerParameter:   name 1, type 2 (string), blobs 7
    V1LayerParameter: name 4, type 5 (enum), blobs 6
    BlobProto:        num 1, channels 2, height 3, width 4, data 5 (float), shape 7 (BlobShape: dim 1, int64),
                      double_data 8
Repeated numbers may be packed or not. A blob's shape is `shape.dim` when present, else (num, channels, height,
width) as Caffe's legacy blobs; converters reshape to the torch layout themselves.
"""
from collections import OrderedDict

import numpy as np

from tool.io import UserError

VARINT, FIXED64, BYTES, FIXED32 = 0, 1, 2, 5
NET_LAYERS_V1, NET_LAYER = 2, 100
LAYER_FIELDS = {NET_LAYER: {'name': 1, 'blobs': 7}, NET_LAYERS_V1: {'name': 4, 'blobs': 6}}
BLOB_LEGACY_DIMS = (1, 2, 3, 4)  # num, channels, height, width
BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 7, 8
SHAPE_DIM = 1


class _Corrupt(Exception):
    pass


def load_caffemodel(path):
    """OrderedDict layer name -> list of blobs (np.ndarray: float32, or float64 for double_data), in file order.

    Layers without blobs (ReLU, pooling, data, ...) are left out, as in pycaffe's `net.params`.
    """
    try:
        with open(path, 'rb') as f:
            buf = memoryview(f.read())
    except FileNotFoundError:
        raise UserError(f'caffemodel not found: {path} (check the --weights path)')
    except OSError as e:
        raise UserError(f'cannot read caffemodel {path}: {e.strerror} (check the --weights path)')
    try:
        layers = _read_net(buf, path)
    except (_Corrupt, UnicodeDecodeError) as e:
        raise UserError(f'{path} is not a valid caffemodel (protobuf decoding failed: {e}); '
                        'download it again or pass a Caffe .caffemodel')
    if not layers:
        raise UserError(f'{path} holds no layer with weights; pass a trained .caffemodel such as vgg16_20M.caffemodel')
    return layers


def _read_net(buf, path):
    layers = OrderedDict()
    for number, wire, value in _fields(buf):
        if number in LAYER_FIELDS and wire == BYTES:
            name, blobs = _read_layer(value, LAYER_FIELDS[number])
            if not blobs:
                continue
            if name in layers:
                raise UserError(f'{path}: two layers with weights are named {name!r}; '
                                'rename one in the net definition and save the model again')
            layers[name] = blobs
    return layers


def _read_layer(buf, fields):
    name, blobs = '', []
    for number, wire, value in _fields(buf):
        if number == fields['name'] and wire == BYTES:
            name = bytes(value).decode('utf-8')
        elif number == fields['blobs'] and wire == BYTES:
            blobs.append(_read_blob(value, name))
    return name, blobs


def _read_blob(buf, layer_name):
    legacy_dims, dims, data, double_data = {}, [], [], []
    for number, wire, value in _fields(buf):
        if number in BLOB_LEGACY_DIMS and wire == VARINT:
            legacy_dims[number] = value
        elif number == BLOB_SHAPE and wire == BYTES:
            dims = [d for n, w, v in _fields(value) if n == SHAPE_DIM for d in _repeated_varints(w, v)]
        elif number == BLOB_DATA:
            data.append(_repeated_fixed(wire, value, FIXED32, '<f4'))
        elif number == BLOB_DOUBLE_DATA:
            double_data.append(_repeated_fixed(wire, value, FIXED64, '<f8'))
    if dims:
        shape = tuple(dims)
    else:
        shape = tuple(legacy_dims.get(n, 0) for n in BLOB_LEGACY_DIMS)
    values = np.concatenate(double_data or data or [np.empty(0, np.float32)])
    if values.size != int(np.prod(shape)):
        raise _Corrupt(f'layer {layer_name}: {values.size} values for shape {shape}')
    return values.reshape(shape).astype(values.dtype.newbyteorder('='), copy=False)


def _repeated_varints(wire, value):
    if wire == VARINT:
        return [_signed64(value)]
    if wire != BYTES:
        raise _Corrupt('bad wire type for a repeated integer')
    out, pos = [], 0
    while pos < len(value):
        number, pos = _varint(value, pos)
        out.append(_signed64(number))
    return out


def _repeated_fixed(wire, value, element_wire, dtype):
    """One element (unpacked encoding) or a packed run of little-endian floats/doubles."""
    if wire not in (element_wire, BYTES):
        raise _Corrupt('bad wire type for a repeated float')
    raw = bytes(value)
    if len(raw) % np.dtype(dtype).itemsize:
        raise _Corrupt('packed floats of a broken length')
    return np.frombuffer(raw, dtype=dtype)


def _signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _varint(buf, pos):
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Corrupt('a number runs past the end of its message')
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf):
    """Yield (field number, wire type, value) of one message: an int for varints, a memoryview otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire in (FIXED64, FIXED32):
            end = pos + (8 if wire == FIXED64 else 4)
            value, pos = buf[pos:end], end
        elif wire == BYTES:
            length, pos = _varint(buf, pos)
            end = pos + length
            value, pos = buf[pos:end], end
        else:
            raise _Corrupt(f'unsupported wire type {wire}')
        if pos > len(buf) or number == 0:
            raise _Corrupt('field runs past the end of its message')
        yield number, wire, value
