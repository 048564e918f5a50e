"""The SFL COCO localiser: SEAM with K classes and no background channel (fc8 4096 -> K); the PCM keeps only
the per-pixel maximum over all K peak-normed channels."""
from network import resnet38_SEAM
from tool.equivariance import peak_norm
from tool.sfl import max_onehot_all


class Net(resnet38_SEAM.Net):
    def __init__(self, classes_counter, **kwargs):
        self.classes = classes_counter
        super().__init__(**kwargs)

    def pcm_seeds(self, cam):
        return max_onehot_all(peak_norm(cam))
