"""Read files written by `mx.nd.save` (mxnet `.params`) with NumPy only; mxnet is not needed.

File layout (little-endian), see ../shared/spec/dependencies.md:
    u64 0x112 | u64 0 | u64 N | N records | u64 K | K x (u64 length, UTF-8 name)
K is 0 when a list was saved (keys become '0', '1', ...), else K == N.
A record starts with a u32 that picks its layout:
    0xF993FAC9 (V2) / 0xF993FACA (V3): i32 storage type, i32 ndim + ndim i64 dims, context, i32 type flag, data
    0xF993FAC8 (V1):                   u32 ndim + ndim i64 dims, context, i32 type flag, data
    anything else (legacy, mxnet <= 0.10): that u32 is ndim, ndim u32 dims, context, i32 type flag, data
A record without a shape (V2/V1/legacy ndim 0, V3 ndim -1) holds no data; it is returned as an empty
float32 array. bfloat16 data (type flag 12) is returned as float32 (exact: bf16 is the top half of f32).
Only dense storage is read; sparse (row_sparse, csr) records raise UserError.
"""
import os
import struct
from collections import OrderedDict

import numpy as np

from tool.io import UserError

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
BF16_FLAG = 12
MAX_NDIM = 32  # mxnet arrays have at most a handful of dimensions; more means a corrupt record
TYPE_FLAGS = {0: '<f4', 1: '<f8', 2: '<f2', 3: 'u1', 4: '<i4', 5: 'i1', 6: '<i8', 7: '?',
              8: '<i2', 9: '<u2', 10: '<u4', 11: '<u8', BF16_FLAG: '<u2'}
STORAGE_NAMES = {1: 'row_sparse', 2: 'csr'}


class _Truncated(Exception):
    pass


class _Reader:
    """Little-endian reads from a file that raise _Truncated instead of reading past its end."""

    def __init__(self, f):
        self.f = f
        self.size = os.fstat(f.fileno()).st_size

    def read(self, size):
        if size > self.size - self.f.tell():
            raise _Truncated
        return self.f.read(size)

    def unpack(self, fmt):
        return struct.unpack('<' + fmt, self.read(struct.calcsize('<' + fmt)))

    def u32(self):
        return self.unpack('I')[0]

    def i32(self):
        return self.unpack('i')[0]

    def u64(self):
        return self.unpack('Q')[0]

    def array(self, shape, dtype):
        dtype = np.dtype(dtype)
        if int(np.prod(shape, dtype=np.float64)) * dtype.itemsize > self.size - self.f.tell():
            raise _Truncated
        out = np.empty(shape, dtype=dtype)
        if out.nbytes:
            self.f.readinto(memoryview(out).cast('B'))
        return out

    def at_end(self):
        return self.f.tell() == self.size


def load_mxnet_params(path):
    """OrderedDict name -> np.ndarray of an `mx.nd.save` file, in file order (names '0', '1', ... for lists)."""
    try:
        with open(path, 'rb') as f:
            return _read_file(_Reader(f), path)
    except FileNotFoundError:
        raise UserError(f'mxnet params file not found: {path} (check the --weights path)')
    except OSError as e:
        raise UserError(f'cannot read mxnet params file {path}: {e.strerror} (check the --weights path)')
    except (_Truncated, UnicodeDecodeError):
        raise UserError(f'mxnet params file {path} is truncated or corrupt (ends early); download it again')


def _read_file(reader, path):
    try:
        magic, _reserved, count = reader.unpack('QQQ')
    except _Truncated:
        magic = None
    if magic != LIST_MAGIC:
        raise UserError(f'{path} is not an mxnet .params file (no mx.nd.save header); '
                        'pass a file written by mxnet, e.g. ilsvrc-cls_rna-a1_cls1000_ep-0001.params')
    arrays = [_read_record(reader, path, i) for i in range(count)]
    names = [reader.unpack(f'{reader.u64()}s')[0].decode('utf-8') for _ in range(reader.u64())]
    if not reader.at_end():
        raise UserError(f'mxnet params file {path} has bytes after its last entry (corrupt); download it again')
    if not names:
        names = [str(i) for i in range(count)]
    if len(names) != count or len(set(names)) != count:
        raise UserError(f'mxnet params file {path} has {len(names)} names (distinct: {len(set(names))}) '
                        f'for {count} arrays (corrupt); download it again')
    return OrderedDict(zip(names, arrays))


def _read_record(reader, path, index):
    magic = reader.u32()
    if magic in (V2_MAGIC, V3_MAGIC):
        storage = reader.i32()
        if storage != 0:
            kind = STORAGE_NAMES.get(storage, f'type {storage}')
            raise UserError(f'{path}: array {index} has {kind} storage; only dense arrays are supported '
                            '(save the weights as dense arrays with mxnet, e.g. arr.tostype("default"))')
        ndim, dim_format = reader.i32(), 'q'
        no_shape = ndim == (-1 if magic == V3_MAGIC else 0)
    elif magic == V1_MAGIC:
        ndim, dim_format = reader.u32(), 'q'
        no_shape = ndim == 0
    else:  # legacy: the tag is the number of dimensions
        ndim, dim_format = magic, 'I'
        no_shape = ndim == 0
    if no_shape:
        return np.empty(0, dtype=np.float32)
    if not 0 <= ndim <= MAX_NDIM:
        raise UserError(f'{path}: array {index} starts with an unknown record (tag 0x{magic:08X}, ndim {ndim}); '
                        'this is not an mxnet .params file or it is corrupt; download it again')
    shape = reader.unpack(f'{ndim}{dim_format}')
    if min(shape, default=0) < 0:
        raise UserError(f'{path}: array {index} has an invalid shape {shape} (corrupt); download it again')
    reader.unpack('ii')  # context (device type and id): irrelevant on load
    flag = reader.i32()
    if flag not in TYPE_FLAGS:
        raise UserError(f'{path}: array {index} has unknown mxnet type flag {flag} (corrupt or a newer mxnet)')
    data = reader.array(shape, TYPE_FLAGS[flag])
    if flag == BF16_FLAG:
        data = (data.astype('<u4') << 16).view('<f4')
    return data.astype(data.dtype.newbyteorder('='), copy=False)
