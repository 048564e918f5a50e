"""tool.mxnet_params: the NumPy reader of `mx.nd.save` files.

The three real files in ../shared/fixtures/mxnet/ were written by mxnet 1.9.1 (V2 records), 0.11.0 (V1) and
0.9.5 (legacy), each beside an .npz of the same arrays in the same order. The small writer below follows the
layout in ../shared/spec/dependencies.md; it is checked to reproduce those real files byte for byte, so the
synthetic files built with it (V3, bf16, sparse, lists, none-records; also used by test_weights.py) are
what mxnet would write.
"""
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from tool.io import UserError
from tool.mxnet_params import load_mxnet_params

FIXTURES = Path(__file__).resolve().parents[2] / 'shared' / 'fixtures' / 'mxnet'
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(),
                                    reason=f'mxnet fixtures folder {FIXTURES} is absent (shared/ beside the repo)')
SAMPLES = ['sample', 'sample_v1', 'sample_legacy']
VERSION_OF_SAMPLE = {'sample': 'v2', 'sample_v1': 'v1', 'sample_legacy': 'legacy'}

MAGIC = {'v1': 0xF993FAC8, 'v2': 0xF993FAC9, 'v3': 0xF993FACA}
FLAG_OF_DTYPE = {'<f4': 0, '<f8': 1, '<f2': 2, '|u1': 3, '<i4': 4, '|i1': 5, '<i8': 6, '|b1': 7,
                 '<i2': 8, '<u2': 9, '<u4': 10, '<u8': 11}
CPU_CONTEXT = struct.pack('<ii', 1, 0)


def mx_record(array, version='v2', flag=None):
    """One dense record as mxnet writes it; `flag` overrides the type flag (12 = bf16 bits in a uint16 array)."""
    array = np.asarray(array)
    shape, n = array.shape, array.ndim
    if version == 'legacy':
        head = struct.pack(f'<I{n}I', n, *shape)
    elif version == 'v1':
        head = struct.pack(f'<II{n}q', MAGIC['v1'], n, *shape)
    else:
        head = struct.pack(f'<Iii{n}q', MAGIC[version], 0, n, *shape)
    flag = FLAG_OF_DTYPE[array.dtype.str] if flag is None else flag
    return head + CPU_CONTEXT + struct.pack('<i', flag) + array.tobytes()


def mx_file(records, names=None):
    """The bytes of an mx.nd.save file: a list when `names` is None, else a dict."""
    names = names or []
    out = struct.pack('<QQQ', 0x112, 0, len(records)) + b''.join(records) + struct.pack('<Q', len(names))
    for name in names:
        out += struct.pack('<Q', len(name.encode())) + name.encode()
    return out


def write_mxnet_params(path, arrays, version='v2'):
    """Write an OrderedDict name -> array as mx.nd.save would (dict form)."""
    Path(path).write_bytes(mx_file([mx_record(a, version) for a in arrays.values()], list(arrays)))
    return path


def assert_same_arrays(got, expected_npz):
    assert list(got) == expected_npz.files
    for name in expected_npz.files:
        want = expected_npz[name]
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        assert got[name].tobytes() == want.tobytes(), name


@needs_fixtures
@pytest.mark.parametrize('sample', SAMPLES)
def test_reads_real_mxnet_files_exactly(sample):
    got = load_mxnet_params(FIXTURES / f'{sample}.params')
    assert_same_arrays(got, np.load(FIXTURES / f'{sample}.npz'))


@needs_fixtures
def test_fixture_dtypes_cover_the_common_type_flags():
    dtypes = {a.dtype.str for a in load_mxnet_params(FIXTURES / 'sample.params').values()}
    assert dtypes == {'<f4', '<f8', '<f2', '|u1', '<i4', '<i8', '|i1'}


@needs_fixtures
@pytest.mark.parametrize('sample', SAMPLES)
def test_test_writer_reproduces_real_files_byte_for_byte(sample, tmp_path):
    npz = np.load(FIXTURES / f'{sample}.npz')
    out = write_mxnet_params(tmp_path / 'w.params', {k: npz[k] for k in npz.files}, VERSION_OF_SAMPLE[sample])
    assert out.read_bytes() == (FIXTURES / f'{sample}.params').read_bytes()


def test_v3_records_every_type_flag_and_scalars(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {f'arg:a{i}': (rng.standard_normal((2, 3)) * 50).astype(dtype)
              for i, dtype in enumerate(['<f4', '<f8', '<f2', 'u1', '<i4', 'i1', '<i8', '?',
                                         '<i2', '<u2', '<u4', '<u8'])}
    arrays['aux:scalar'] = np.array(7.5, dtype=np.float32)
    path = write_mxnet_params(tmp_path / 'v3.params', arrays, 'v3')
    got = load_mxnet_params(path)
    assert list(got) == list(arrays)
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert got[name].tobytes() == want.tobytes()


def test_bf16_is_returned_as_float32(tmp_path):
    values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65280.0]], dtype=np.float32)
    bits = (values.view(np.uint32) >> 16).astype('<u2')  # bf16 = top 16 bits of the float32
    path = tmp_path / 'bf16.params'
    path.write_bytes(mx_file([mx_record(bits, 'v2', flag=12)], ['arg:w']))
    got = load_mxnet_params(path)['arg:w']
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bits.astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(got[0], [1.0, -2.5, 3.140625])  # exactly representable in bf16


def test_list_file_gets_index_names_and_none_records_are_empty(tmp_path):
    none_v2 = struct.pack('<Iii', MAGIC['v2'], 0, 0)
    none_v3 = struct.pack('<Iii', MAGIC['v3'], 0, -1)
    first = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / 'list.params'
    path.write_bytes(mx_file([mx_record(first), none_v2, none_v3, mx_record(np.int64(4), 'v3')]))
    got = load_mxnet_params(path)
    assert list(got) == ['0', '1', '2', '3']
    np.testing.assert_array_equal(got['0'], first)
    assert got['1'].size == 0 and got['2'].size == 0
    assert got['3'].shape == () and got['3'] == 4


def test_sparse_storage_is_a_clear_error(tmp_path):
    # row_sparse: storage shape (nnz=1, 3), shape (4, 3), context, f32, aux int64 indices of shape (1,)
    record = (struct.pack('<Iii2qi2q', MAGIC['v2'], 1, 2, 1, 3, 2, 4, 3) + CPU_CONTEXT + struct.pack('<i', 0)
              + struct.pack('<ii1q', 6, 1, 1) + np.ones(3, '<f4').tobytes() + struct.pack('<q', 2))
    path = tmp_path / 'sparse.params'
    path.write_bytes(mx_file([record], ['arg:emb']))
    with pytest.raises(UserError, match='row_sparse storage'):
        load_mxnet_params(path)


def synthetic_bytes():
    arrays = {'arg:conv1a_weight': np.ones((4, 3, 3, 3), np.float32), 'aux:bn7_moving_var': np.ones(4, np.float64)}
    return mx_file([mx_record(a) for a in arrays.values()], list(arrays))


@pytest.mark.parametrize('keep', [0, 10, 30, 60, 200, -20, -1])
def test_truncated_file_is_a_one_line_error_naming_it(keep, tmp_path):
    path = tmp_path / 'cut.params'
    path.write_bytes(synthetic_bytes()[:keep])
    with pytest.raises(UserError) as err:
        load_mxnet_params(path)
    message = str(err.value)
    assert str(path) in message and '\n' not in message
    assert ('truncated' in message) or ('not an mxnet' in message)


@needs_fixtures
def test_truncated_real_file(tmp_path):
    path = tmp_path / 'cut.params'
    shutil.copy(FIXTURES / 'sample_legacy.params', path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match='truncated'):
        load_mxnet_params(path)


def test_other_files_are_clear_errors(tmp_path):
    png = tmp_path / 'image.params'
    png.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(100))
    with pytest.raises(UserError, match='not an mxnet .params file'):
        load_mxnet_params(png)
    trailing = tmp_path / 'trailing.params'
    trailing.write_bytes(synthetic_bytes() + b'junk')
    with pytest.raises(UserError, match='bytes after its last entry'):
        load_mxnet_params(trailing)
    with pytest.raises(UserError, match='not found'):
        load_mxnet_params(tmp_path / 'missing.params')
