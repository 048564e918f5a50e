"""Command-line plumbing: booleans, network import errors, one-line errors from DataLoader workers."""
import argparse

import pytest
from torch.utils.data import DataLoader, Dataset

from tool.cli import import_network, run_main, str2bool
from tool.io import UserError


def test_str2bool():
    assert str2bool('False') is False and str2bool('true') is True and str2bool('0') is False
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool('maybe')


def test_import_network_errors_and_width():
    with pytest.raises(UserError, match='network.nope'):
        import_network('network.nope')
    with pytest.raises(UserError, match='SegNet'):
        import_network('network.resnet38_cls', 'SegNet')
    narrow = import_network('network.resnet38_cls', width=0.125)
    assert narrow.fc8.weight.shape == (20, 512, 1, 1)


class BadData(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise UserError('corrupt image /data/x.jpg: OSError (re-download or remove it from the list)')


def test_worker_error_prints_one_line(capsys):
    def main(argv):
        for _ in DataLoader(BadData(), num_workers=1):
            pass

    with pytest.raises(SystemExit) as exit_info:
        run_main(main)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert err == 'error: corrupt image /data/x.jpg: OSError (re-download or remove it from the list)'


def test_scale_list():
    from tool.cli import scale_list
    assert scale_list('1,0.5,1.5') == (1.0, 0.5, 1.5)
    for bad in ('', '1,,2', '0,1', 'a'):
        with pytest.raises(argparse.ArgumentTypeError):
            scale_list(bad)
