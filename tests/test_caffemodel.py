"""tool.caffemodel: the protobuf-free reader of Caffe NetParameter files.

How the test files are made: the helpers below are a tiny protobuf *encoder* (base-128 varints, field keys
`number << 3 | wire type`, length-delimited sub-messages, fixed32 floats) that writes NetParameter messages
with the field numbers of the public caffe.proto:
    NetParameter: name 1, layers 2 (V1LayerParameter), layer 100 (LayerParameter)
    LayerParameter: name 1, type 2, bottom 3, top 4, blobs 7
    V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6, blobs_lr 7
    BlobProto: num 1, channels 2, height 3, width 4, data 5, shape 7 (BlobShape: dim 1), double_data 8
Repeated numbers are written packed (as caffe.proto declares them) or unpacked (one field per value, which
a protobuf parser must accept too). Fields the reader does not need (bottom, top, blobs_lr) are written so it
must skip them. The encoder is cross-checked against the `protobuf` package: the same messages are built
with message classes made at run time from a hand-written descriptor of those fields, serialized, and must
give the same bytes and the same arrays, so the encoder does not just mirror the reader.
"""
from collections import OrderedDict

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tool.caffemodel import load_caffemodel
from tool.io import UserError

V1_CONVOLUTION, V1_INNER_PRODUCT, V1_RELU = 4, 14, 18  # V1LayerParameter.LayerType values in caffe.proto


# ---- a tiny protobuf encoder -------------------------------------------------------------------------------

def varint(value):
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def key(number, wire):
    return varint(number << 3 | wire)


def f_varint(number, value):
    return key(number, 0) + varint(value)


def f_bytes(number, payload):
    payload = payload.encode() if isinstance(payload, str) else payload
    return key(number, 2) + varint(len(payload)) + payload


def f_floats(number, values, packed, dtype='<f4'):
    values = np.asarray(values, dtype=dtype).ravel()
    if packed:
        return f_bytes(number, values.tobytes()) if values.size else b''
    wire = 5 if dtype == '<f4' else 1  # fixed32 / fixed64
    return b''.join(key(number, wire) + v.tobytes() for v in values)


def f_varints(number, values, packed):
    if packed:
        return f_bytes(number, b''.join(varint(v) for v in values))
    return b''.join(f_varint(number, v) for v in values)


def blob(array, legacy=False, packed=True, double=False):
    """A BlobProto: (num, channels, height, width) when `legacy`, else a BlobShape; fields in number order."""
    if legacy:
        dims = b''.join(f_varint(n, d) for n, d in zip((1, 2, 3, 4), array.shape))
        return dims + f_floats(5, array, packed)
    shape = f_bytes(7, f_varints(1, array.shape, packed))
    if double:
        return shape + f_floats(8, array, packed, '<f8')
    return f_floats(5, array, packed) + shape


def v1_layer(name, type_enum, blobs, bottom='data', top=None):
    return f_bytes(2, (f_bytes(2, bottom) + f_bytes(3, top or name) + f_bytes(4, name) + f_varint(5, type_enum)
                       + b''.join(f_bytes(6, b) for b in blobs) + f_floats(7, [1.0] * len(blobs), False)))


def new_layer(name, type_name, blobs, bottom='data', top=None):
    return f_bytes(100, (f_bytes(1, name) + f_bytes(2, type_name) + f_bytes(3, bottom) + f_bytes(4, top or name)
                         + b''.join(f_bytes(7, b) for b in blobs)))


def net(name, *layers):
    return f_bytes(1, name) + b''.join(layers)


# ---- the same messages through the protobuf package ---------------------------------------------------------

def caffe_message_classes(packed):
    """NetParameter & co. for the fields above, made from a hand-written FileDescriptorProto."""
    F = descriptor_pb2.FieldDescriptorProto
    optional, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    file = descriptor_pb2.FileDescriptorProto(name=f'caffe_min_{packed}.proto', package='caffe_min',
                                              syntax='proto2')

    def message(name, fields, enum=None):
        msg = file.message_type.add(name=name)
        if enum:
            msg.enum_type.add(name=enum[0]).value.extend(
                descriptor_pb2.EnumValueDescriptorProto(name=n, number=v) for n, v in enum[1])
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = '.caffe_min.' + type_name
            if field_name in ('data', 'dim', 'double_data'):  # [packed = true] in caffe.proto
                field.options.packed = packed

    message('BlobShape', [('dim', 1, F.TYPE_INT64, repeated, None)])
    message('BlobProto', [('num', 1, F.TYPE_INT32, optional, None), ('channels', 2, F.TYPE_INT32, optional, None),
                          ('height', 3, F.TYPE_INT32, optional, None), ('width', 4, F.TYPE_INT32, optional, None),
                          ('data', 5, F.TYPE_FLOAT, repeated, None),
                          ('shape', 7, F.TYPE_MESSAGE, optional, 'BlobShape'),
                          ('double_data', 8, F.TYPE_DOUBLE, repeated, None)])
    message('LayerParameter', [('name', 1, F.TYPE_STRING, optional, None), ('type', 2, F.TYPE_STRING, optional, None),
                               ('bottom', 3, F.TYPE_STRING, repeated, None), ('top', 4, F.TYPE_STRING, repeated, None),
                               ('blobs', 7, F.TYPE_MESSAGE, repeated, 'BlobProto')])
    message('V1LayerParameter', [('bottom', 2, F.TYPE_STRING, repeated, None), ('top', 3, F.TYPE_STRING, repeated, None),
                                 ('name', 4, F.TYPE_STRING, optional, None),
                                 ('type', 5, F.TYPE_ENUM, optional, 'V1LayerParameter.LayerType'),
                                 ('blobs', 6, F.TYPE_MESSAGE, repeated, 'BlobProto'),
                                 ('blobs_lr', 7, F.TYPE_FLOAT, repeated, None)],
            enum=('LayerType', [('NONE', 0), ('CONVOLUTION', V1_CONVOLUTION), ('INNER_PRODUCT', V1_INNER_PRODUCT),
                                ('RELU', V1_RELU)]))
    message('NetParameter', [('name', 1, F.TYPE_STRING, optional, None),
                             ('layers', 2, F.TYPE_MESSAGE, repeated, 'V1LayerParameter'),
                             ('layer', 100, F.TYPE_MESSAGE, repeated, 'LayerParameter')])
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(file.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName('caffe_min.NetParameter'))


def fill_blob(msg, array, legacy=False, double=False):
    if legacy:
        msg.num, msg.channels, msg.height, msg.width = array.shape
    else:
        msg.shape.dim.extend(array.shape)
    (msg.double_data if double else msg.data).extend(array.ravel().tolist())


# ---- data ---------------------------------------------------------------------------------------------------

def arrays():
    rng = np.random.default_rng(0)
    return OrderedDict([
        ('conv1_1', [rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                     rng.standard_normal((1, 1, 1, 4)).astype(np.float32)]),
        ('fc6', [rng.standard_normal((5, 4, 3, 3)).astype(np.float32), rng.standard_normal(5).astype(np.float32)]),
        ('fc8', [rng.standard_normal((2, 5)).astype(np.float64)]),
    ])


def old_form(packed):
    legacy = expected_old_form()
    return net('vgg16_old',
               v1_layer('data', 0, []),
               v1_layer('conv1_1', V1_CONVOLUTION, [blob(x, legacy=True, packed=packed) for x in legacy['conv1_1']]),
               v1_layer('relu1_1', V1_RELU, [], bottom='conv1_1', top='conv1_1'),
               v1_layer('fc6', V1_CONVOLUTION, [blob(x, legacy=True, packed=packed) for x in legacy['fc6']]))


def new_form(packed):
    a = arrays()
    return net('vgg16_new',
               new_layer('conv1_1', 'Convolution', [blob(x, packed=packed) for x in a['conv1_1']]),
               new_layer('relu1_1', 'ReLU', []),
               new_layer('fc6', 'Convolution', [blob(x, packed=packed) for x in a['fc6']]),
               new_layer('fc8', 'InnerProduct', [blob(x, packed=packed, double=True) for x in a['fc8']]))


def expected_old_form():
    a = arrays()
    return OrderedDict([('conv1_1', a['conv1_1']), ('fc6', [a['fc6'][0], a['fc6'][1].reshape(1, 1, 1, 5)])])


def assert_layers_equal(got, want):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            assert g.tobytes() == w.tobytes(), name


# ---- tests --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('packed', [True, False])
def test_old_layers_form_with_num_channels_height_width(packed, tmp_path):
    path = tmp_path / 'old.caffemodel'
    path.write_bytes(old_form(packed))
    got = load_caffemodel(path)
    assert_layers_equal(got, expected_old_form())  # leading 1s kept: (1, 1, 1, 4) bias


@pytest.mark.parametrize('packed', [True, False])
def test_new_layer_form_with_blob_shape_and_double_data(packed, tmp_path):
    path = tmp_path / 'new.caffemodel'
    path.write_bytes(new_form(packed))
    assert_layers_equal(load_caffemodel(path), arrays())  # layers without blobs are left out


def test_both_forms_in_one_file_keep_file_order(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / 'mixed.caffemodel'
    path.write_bytes(net('mixed', new_layer('b', 'InnerProduct', [blob(w)]),
                         v1_layer('a', V1_INNER_PRODUCT, [blob(w.reshape(1, 1, 2, 3), legacy=True)])))
    got = load_caffemodel(path)
    assert list(got) == ['b', 'a']
    np.testing.assert_array_equal(got['a'][0].reshape(2, 3), got['b'][0])


@pytest.mark.parametrize('packed', [True, False])
def test_encoder_matches_protobuf_package(packed, tmp_path):
    NetParameter = caffe_message_classes(packed)
    a = arrays()
    msg = NetParameter(name='vgg16_old')
    msg.layers.add(name='data', type=0, bottom=['data'], top=['data'])
    conv = msg.layers.add(name='conv1_1', type=V1_CONVOLUTION, bottom=['data'], top=['conv1_1'])
    for x in a['conv1_1']:
        fill_blob(conv.blobs.add(), x, legacy=True)
    conv.blobs_lr.extend([1.0, 1.0])
    msg.layers.add(name='relu1_1', type=V1_RELU, bottom=['conv1_1'], top=['conv1_1'])
    fc6 = msg.layers.add(name='fc6', type=V1_CONVOLUTION, bottom=['data'], top=['fc6'])
    for x in expected_old_form()['fc6']:
        fill_blob(fc6.blobs.add(), x, legacy=True)
    fc6.blobs_lr.extend([1.0, 1.0])
    assert msg.SerializeToString() == old_form(packed)

    msg = NetParameter(name='vgg16_new')
    for name, kind, double in [('conv1_1', 'Convolution', False), ('relu1_1', 'ReLU', False),
                               ('fc6', 'Convolution', False), ('fc8', 'InnerProduct', True)]:
        layer = msg.layer.add(name=name, type=kind, bottom=['data'], top=[name])
        for x in a.get(name, []):
            fill_blob(layer.blobs.add(), x, double=double)
    serialized = msg.SerializeToString()
    assert serialized == new_form(packed)
    path = tmp_path / 'protobuf.caffemodel'
    path.write_bytes(serialized)
    assert_layers_equal(load_caffemodel(path), a)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    data = new_form(True)
    for keep in (len(data) - 7, 3):
        path = tmp_path / f'cut{keep}.caffemodel'
        path.write_bytes(data[:keep])
        with pytest.raises(UserError, match='not a valid caffemodel') as err:
            load_caffemodel(path)
        assert str(path) in str(err.value) and '\n' not in str(err.value)
    text = tmp_path / 'deploy.prototxt.caffemodel'
    text.write_bytes(b'name: "VGG"\nlayer { name: "conv1_1" type: "Convolution" }\n')
    with pytest.raises(UserError, match=str(text)):
        load_caffemodel(text)
    with pytest.raises(UserError, match='not found'):
        load_caffemodel(tmp_path / 'missing.caffemodel')


def test_blob_size_not_matching_its_shape_is_an_error(tmp_path):
    bad = f_varint(1, 2) + f_varint(2, 3) + f_varint(3, 1) + f_varint(4, 1) + f_floats(5, [1.0] * 5, True)
    path = tmp_path / 'bad.caffemodel'
    path.write_bytes(net('bad', v1_layer('fc', V1_INNER_PRODUCT, [bad])))
    with pytest.raises(UserError, match='5 values for shape'):
        load_caffemodel(path)
