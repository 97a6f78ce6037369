"""DegradationCLIPModel: fine-tunes VLU-Net's degradation-aware CLIP on degraded images and their labels.

Only the learnable parts train (the two adapters; the backbone too when `train_backbone` is set),
with cross-entropy over `DegradationCLIP.logits` against `deg_label`, as the release does (Adam,
lr 1e-5, batch 32). Validation reports top-1 accuracy per set and over all sets. Checkpoints hold
only the learnable state, `models/net_clip_<iter>.pth` = {'params': learnable_state_dict()}, which is
what VLUNetModel's `path.pretrain_network_degradation_clip` takes.

The option block is `network_clip`, not `network_g`: BasicSR's resume (`check_resume`) maps every
`network_<x>` key to `path.pretrain_network_<x>` = `models/net_<x>_<iter>.pth`, so `network_clip`
resumes from exactly the `net_clip_<iter>.pth` files `save()` writes, and the files' name says what
they hold (VLU-Net's own checkpoints are `net_g_*`). The optimizer options are `train.optim_clip`
(`train.optim_g` is accepted too); `train.scheduler` is optional (the release keeps lr constant).
"""
import os.path as osp
from collections import OrderedDict

import torch
import torch.nn.functional as F
from basicsr.models.base_model import BaseModel
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY

from vlu_plugin.archs.degradation_clip_arch import ADAPTER_PREFIXES
from vlu_plugin.utils.checkpoints import convert_official, load_checkpoint
from vlu_plugin.models.base import PluginModelMixin, build_network
from vlu_plugin.models import progressive
from vlu_plugin.utils.precision import MixedPrecisionMixin, pop_compile_option
from vlu_plugin.utils import records
from vlu_plugin.utils.records import ACCURACY_METRIC

OVERALL = 'overall'


def read_degradation_clip_weights(path):
    """The learnable state in a DegradationCLIP file: ours ({'params': ...} or bare) or a release checkpoint."""
    try:
        checkpoint = load_checkpoint(osp.expanduser(path))
    except RuntimeError as error:  # a release file holding pickled objects: option files cannot say --trust
        raise RuntimeError(f'{error} From an option file, convert it once instead: '
                           f'vlu convert clip-adapters {path} clip_adapters.pth --trust') from error
    state = checkpoint.get('params', checkpoint) if isinstance(checkpoint, dict) else checkpoint
    if isinstance(state, dict) and any(k.startswith(ADAPTER_PREFIXES) for k in state):
        return state
    # clip_tuned.pth ({'learnable_params': ...}) or the VLU-Net Lightning checkpoint (model_degradation.*)
    return convert_official('DegradationCLIP', checkpoint)


def load_degradation_clip(net, path):
    """Load a DegradationCLIP's learnable weights from `path` (see `read_degradation_clip_weights`)."""
    net.load_learnable(read_degradation_clip_weights(path))
    get_root_logger().info(f'Loaded DegradationCLIP weights from {path}')
    return net


class _LearnableState:
    """Lets BasicSR's `save_network` (which calls `.state_dict()`) write only a CLIP's learnable state."""

    def __init__(self, net):
        self.net = net

    def state_dict(self):
        """The wrapped network's `learnable_state_dict()`."""
        return self.net.learnable_state_dict()


@MODEL_REGISTRY.register()
class DegradationCLIPModel(MixedPrecisionMixin, PluginModelMixin, BaseModel):
    """Trains a DegradationCLIP's adapters with cross-entropy against degradation labels; reports accuracy."""

    # BasicSR's logger + tensorboard lines for validation metrics; they only read metric_results
    _log_validation_metric_values = SRModel._log_validation_metric_values

    def __init__(self, opt):
        super().__init__(opt)
        self.compile_networks = pop_compile_option(opt, 'network_clip')
        self.net_clip = self.model_to_device(build_network(opt['network_clip']))
        self.print_network(self.net_clip)
        load_path = opt['path'].get('pretrain_network_clip')
        if load_path is not None:
            load_degradation_clip(self.clip, load_path)
        self._warned_texts = set()
        self._overall = None
        if self.is_train:
            self.init_training_settings()

    @property
    def clip(self):
        """The bare DegradationCLIP (without a DDP/DataParallel wrapper)."""
        return self.get_bare_model(self.net_clip)

    def init_training_settings(self):
        """Optimizer over the CLIP's trainable parameters; schedulers only if `train.scheduler` is given."""
        self.net_clip.train()
        if progressive.requested(self.opt):  # it classifies whole crops
            raise ValueError('DegradationCLIPModel: progressive learning (datasets.train.iters / gt_sizes / '
                             'mini_batch_sizes) is for restoration models; remove those keys')
        train_opt = self.opt['train']
        optim_opt = train_opt.get('optim_clip') or train_opt.get('optim_g')
        if not optim_opt:
            raise KeyError('DegradationCLIPModel needs train.optim_clip, e.g. {type: Adam, lr: 1.0e-5}')
        optim_opt = dict(optim_opt)  # BasicSR pops 'type' from the options; keep them intact
        params = [p for p in self.net_clip.parameters() if p.requires_grad]
        self.optimizer_clip = self.get_optimizer(optim_opt.pop('type'), params, **optim_opt)
        self.optimizers.append(self.optimizer_clip)
        if train_opt.get('scheduler'):
            self.setup_schedulers()
        self.setup_precision()

    def feed_data(self, data):
        """Take `lq` and `deg_label` from a MultiDegradationDataset batch; check labels against the prompts."""
        self.lq = data['lq'].to(self.device)
        self.deg_label = data['deg_label'].to(self.device).long() if 'deg_label' in data else None
        self.batch_paths = data.get('lq_path')
        if self.deg_label is not None:
            self.clip.check_labels(self.deg_label, where=f' (batch {self.batch_paths})')
            self._check_texts(self.deg_label, data.get('deg_text'))

    def _check_texts(self, labels, texts):
        """Warn once per pair when the dataset's text for a label is not the CLIP's prompt for it."""
        if texts is None:
            return
        prompts = self.clip.prompts
        for label, text in zip(labels.tolist(), texts):
            if text != prompts[label] and (label, text) not in self._warned_texts:
                self._warned_texts.add((label, text))
                get_root_logger().warning(f'label {label}: the dataset says {text!r}, the CLIP prompt is '
                                          f'{prompts[label]!r}; check that both list degradations in the same order')

    def optimize_parameters(self, current_iter):
        """One step of cross-entropy over the CLIP's logits; logs `l_ce` and `train_acc`."""
        if self.deg_label is None:
            raise KeyError('DegradationCLIPModel trains on deg_label; the training dataset gives none')
        self.optimizer_clip.zero_grad()
        with self.train_autocast():
            logits = self.net_clip(self.lq)
            l_ce = F.cross_entropy(logits, self.deg_label)
        if not torch.isfinite(l_ce):
            raise FloatingPointError(f'non-finite loss at iteration {current_iter}; batch: {self.batch_paths}')
        self.backward_and_step(l_ce, self.optimizer_clip)
        accuracy = (logits.detach().argmax(dim=1) == self.deg_label).float().mean()
        self.log_dict = self.reduce_loss_dict(OrderedDict(l_ce=l_ce.detach(), train_acc=accuracy))

    def test(self):
        """Logits of `self.lq` in eval mode, into `self.output`."""
        was_training = self.net_clip.training
        self.net_clip.eval()
        with torch.no_grad(), self.eval_autocast():
            self.output = self.clip.logits(self.lq).float()
        self.net_clip.train(was_training)

    # ---- validation ------------------------------------------------------------------------------------
    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Validate on rank 0 only, as SRModel does."""
        if self.opt['rank'] == 0:
            self.nondist_validation(dataloader, current_iter, tb_logger, save_img)

    def _initialize_best_metric_results(self, dataset_name):
        # this model's metrics are fixed, not read from val.metrics
        if not hasattr(self, 'best_metric_results'):
            self.best_metric_results = {}
        self.best_metric_results.setdefault(dataset_name, {
            ACCURACY_METRIC: dict(better='higher', val=float('-inf'), iter=-1),
            'l_ce': dict(better='lower', val=float('inf'), iter=-1)})

    def _expected_val_sets(self):
        """How many sets one validation round covers (train: `val*` datasets; test: all datasets)."""
        phases = self.opt['datasets'].keys()
        if self.opt['is_train']:
            return sum(1 for phase in phases if phase.split('_')[0] == 'val')
        return len(phases)

    def _report(self, dataset_name, current_iter, tb_logger, correct, total, loss_sum):
        self.metric_results = {ACCURACY_METRIC: correct / total, 'l_ce': loss_sum / total}
        self._initialize_best_metric_results(dataset_name)
        for name, value in self.metric_results.items():
            self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        records.append_metrics(self._records_dir(), current_iter, dataset_name, self.metric_results)

    def _records_dir(self):
        """Where this run's records go: experiments/<name> when training, results/<name> when testing."""
        return self.opt['path']['experiments_root' if self.opt['is_train'] else 'results_root']

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Top-1 accuracy and cross-entropy of one set (and, after a round's last set, of all), logged and in CSVs."""
        dataset_name = dataloader.dataset.opt['name']
        correct, total, loss_sum, predictions = 0, 0, 0.0, []
        for data in dataloader:
            self.feed_data(data)
            if self.deg_label is None:
                raise KeyError(f'validation set {dataset_name!r} gives no deg_label to measure accuracy against')
            self.test()
            predicted = self.output.argmax(dim=1)
            loss_sum += float(F.cross_entropy(self.output, self.deg_label, reduction='sum'))
            correct += int((predicted == self.deg_label).sum())
            total += len(predicted)
            paths = data.get('lq_path') or [f'{total - len(predicted) + i}' for i in range(len(predicted))]
            for path, label, pred in zip(paths, self.deg_label.tolist(), predicted.tolist()):
                predictions.append((current_iter, dataset_name, osp.splitext(osp.basename(path))[0], label, pred))
            del self.lq, self.output
        if total == 0:
            raise ValueError(f'validation set {dataset_name!r} is empty')

        self._report(dataset_name, current_iter, tb_logger, correct, total, loss_sum)
        records.append_predictions(self._records_dir(), predictions)

        # pool the sets of this round; report the pooled numbers after the round's last set
        if self._overall is None or self._overall['iter'] != current_iter:
            self._overall = dict(iter=current_iter, sets=0, correct=0, total=0, loss_sum=0.0)
        tally = self._overall
        tally['sets'] += 1
        tally['correct'] += correct
        tally['total'] += total
        tally['loss_sum'] += loss_sum
        expected = self._expected_val_sets()
        if expected > 1 and tally['sets'] == expected:
            self._report(OVERALL, current_iter, tb_logger, tally['correct'], tally['total'], tally['loss_sum'])
            self._overall = None

    # ---- checkpoints -----------------------------------------------------------------------------------
    def save(self, epoch, current_iter):
        """Write `models/net_clip_<iter>.pth` = {'params': learnable state} and the training state."""
        self.save_network(_LearnableState(self.clip), 'net_clip', current_iter)
        self.save_training_state(epoch, current_iter)
