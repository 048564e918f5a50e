"""bench/bench_memory.py: the meta-device estimate against real CPU counts, the measured path's steps, the table."""
import math

import pytest
import torch

import network
from bench import bench_memory
from tool.train_loop import autocast

WIDTH, CROP = 0.125, 96
STAGES = list(bench_memory.STAGES)
# SBNet's side branches scale with the width: 4 channels at 0.125, where one branch's ReLUs are all off on this
# random batch (no gradient reaches it) and its tiny fp32 losses dominate the activations; 8 channels at 0.25.
STEP_WIDTH = {'train_SB': 0.25}


@pytest.mark.parametrize('stage', STAGES)
def test_meta_count_equals_a_real_cpu_forward(stage, monkeypatch):
    """fp32, and bf16 where the CPU runs real autocast (which saves the bf16 weight copies among the tensors).
    The estimate is of a GPU, where the seg head's DilatedConv2d is a plain conv: the CPU forward runs it so too."""
    monkeypatch.setattr(network.DilatedConv2d, 'forward', torch.nn.Conv2d.forward)
    for amp in ('none', 'bf16'):
        torch.manual_seed(0)
        model = bench_memory.build_model(stage, WIDTH)
        batch = bench_memory.make_batch(stage, 2, CROP)
        with autocast(torch.device('cpu'), amp):
            real = sum(bench_memory.saved_bytes(lambda: bench_memory.stage_loss(stage, model, batch, batch),
                                                list(model.parameters()) + list(model.buffers())))
        meta_model = bench_memory.build_model(stage, WIDTH, 'meta')
        counted = sum(bench_memory.saved_activation_bytes(stage, meta_model, 2, CROP, amp))
        if amp == 'bf16':
            counted += 2 * sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counted == pytest.approx(real, rel=0.01), (amp, counted, real)


@pytest.mark.parametrize('stage', STAGES)
def test_train_steps_run_and_update_the_network(stage):
    torch.manual_seed(0)
    model = bench_memory.build_model(stage, STEP_WIDTH.get(stage, WIDTH))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    batch = bench_memory.make_batch(stage, 2, CROP)
    loss = bench_memory.stage_loss(stage, model, batch, batch)
    assert math.isfinite(loss.item()) and loss.item() > 0
    optimizer = bench_memory.train_steps(stage, model, batch, 1, 'none', torch.device('cpu'))
    assert optimizer.global_step == 2
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_table_rows(capsys):
    stages = list(bench_memory.STAGES)
    bench_memory.main(['--width', str(WIDTH), '--crop', str(CROP), '--estimate', '--stages', ','.join(stages)])
    out = capsys.readouterr().out
    assert 'ESTIMATE' in out
    rows = [line.strip('|').split('|') for line in out.splitlines() if line.startswith('| train_')]
    # micro-batches 0 (whole), 4, 2, 1 that split the batch: cls 16/4/2/1, aff, SEAM and SB 8/4/2/1, seg 4/2/1;
    # x 2 precisions
    assert [(r[0].strip(), int(r[2]), r[3].strip()) for r in rows[:5]] == \
        [('train_cls', 16, 'none'), ('train_cls', 4, 'none'), ('train_cls', 2, 'none'), ('train_cls', 1, 'none'),
         ('train_cls', 16, 'bf16')]
    per_stage = {'train_cls': 4, 'train_aff': 4, 'train_seg': 3, 'train_SEAM': 4, 'train_SB': 4}
    assert len(rows) == 2 * sum(per_stage[s] for s in stages) and all(len(r) == 8 for r in rows)
    assert list(dict.fromkeys(r[0].strip() for r in rows)) == stages
    assert 'train_SB loss: tool/sb_losses.sbnet_loss' in out


@pytest.mark.parametrize('stage', STAGES)
def test_micro_batches_and_bf16_lower_the_estimate(stage):
    batch, width = bench_memory.STAGES[stage][2], STEP_WIDTH.get(stage, WIDTH)
    whole = bench_memory.estimate(stage, batch, 0, 'none', CROP, width)[0]
    assert bench_memory.estimate(stage, batch, 1, 'none', CROP, width)[0] < whole
    # SEAM's losses run in fp32 on 21-channel maps at the crop's resolution, a large share at this small width
    ratio = 0.75 if stage in bench_memory.SIAMESE else 0.6
    assert bench_memory.estimate(stage, batch, 0, 'bf16', CROP, width)[1]['activations'] < \
        ratio * bench_memory.estimate(stage, batch, 0, 'none', CROP, width)[1]['activations']


def test_activations_scale_with_the_micro_batch():
    one = bench_memory.estimate('train_aff', 8, 1, 'none', CROP, WIDTH)[1]
    four = bench_memory.estimate('train_aff', 8, 4, 'none', CROP, WIDTH)[1]
    assert four['activations'] == pytest.approx(4 * one['activations'], rel=0.01)
    assert four['weights'] == one['weights'] and four['grads'] == four['momentum'] == one['grads']
