"""The reference's poly-learning-rate SGD."""
import torch


def parameter_groups(model, lr, weight_decay):
    """The reference's four groups: pretrained weights, pretrained biases, scratch weights, scratch biases."""
    groups = model.get_parameter_groups()
    return [{'params': groups[0], 'lr': lr, 'weight_decay': weight_decay},
            {'params': groups[1], 'lr': 2 * lr, 'weight_decay': 0},
            {'params': groups[2], 'lr': 10 * lr, 'weight_decay': weight_decay},
            {'params': groups[3], 'lr': 20 * lr, 'weight_decay': 0}]


class PolyOptimizer(torch.optim.SGD):
    """SGD with lr_t = lr_0 * (1 - t / max_step) ** power, stepped per iteration.

    The reference passes (params, lr, weight_decay) positionally to SGD, so SGD's momentum is the
    weight-decay value and its "momentum" attribute (0.9) is the poly power. `sgd_momentum=None`
    keeps that quirk; give a number (e.g. 0.9) for real momentum.
    """

    def __init__(self, params, lr, weight_decay, max_step, momentum=0.9, sgd_momentum=None):
        super().__init__(params, lr, momentum=weight_decay if sgd_momentum is None else sgd_momentum)
        self.global_step = 0
        self.max_step = max_step
        self.power = momentum
        self.initial_lr = [group['lr'] for group in self.param_groups]

    def step(self, closure=None):
        if self.global_step < self.max_step:
            lr_mult = (1 - self.global_step / self.max_step) ** self.power
            for group, lr0 in zip(self.param_groups, self.initial_lr):
                group['lr'] = lr0 * lr_mult
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self):
        state = super().state_dict()
        state['poly'] = {'global_step': self.global_step, 'max_step': self.max_step,
                         'initial_lr': list(self.initial_lr)}
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        poly = state_dict.pop('poly')
        super().load_state_dict(state_dict)
        self.global_step = poly['global_step']
        self.max_step = poly['max_step']
        self.initial_lr = poly['initial_lr']
