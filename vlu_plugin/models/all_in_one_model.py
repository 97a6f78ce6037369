"""AllInOneModel: BasicSR's SRModel with what every all-in-one experiment needs.

- the network may take extra inputs (VLU-Net's degradation vector): subclasses return them from
  `condition(lq)`, and training, validation and tiled testing all go through `restore()`;
- validation per degradation set: images saved under the set's name (sets that share file names never
  overwrite each other), metrics on float RGB for the paper's definitions, the degradation
  classifier's accuracy where the data carries labels, and machine-readable `metrics.csv` /
  `degradation_predictions.csv` next to the log;
- `val.crop_to_multiple: 16` reproduces the papers' protocol of centre-cropping lq and gt;
  `val.tile: {size, overlap}` bounds memory on large images;
- `train.amp`, `val.precision` and `train.compile` / `network_g.compile` (see vlu_plugin.utils.precision);
- Restormer's progressive learning (`datasets.train.iters / gt_sizes / mini_batch_sizes`, see
  vlu_plugin.models.progressive).
- `train.fft_opt` (`FFTLoss`, AdaIR's and MoCE-IR's frequency term) beside `pixel_opt`, for any network.
PromptIR trains with this model as it is (plain L1 in its paper's recipe).
"""
import os.path as osp
from collections import OrderedDict

import torch
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY

from vlu_plugin.models.base import PluginModelMixin, check_network_options
from vlu_plugin.models.progressive import ProgressivePatches
from vlu_plugin.utils.precision import MixedPrecisionMixin, pop_compile_option
from vlu_plugin.utils.tiling import tiled_forward
from vlu_plugin.utils import records


def center_crop_to_multiple(img, base):
    """Centre-crop a (B, C, H, W) tensor to multiples of `base`, as the papers' test code does."""
    h, w = img.shape[-2:]
    dh, dw = h % base, w % base
    return img[..., dh // 2:h - dh + dh // 2, dw // 2:w - dw + dw // 2]


@MODEL_REGISTRY.register()
class AllInOneModel(MixedPrecisionMixin, PluginModelMixin, SRModel):
    """SRModel plus conditioned restoration, per-degradation validation, paper metrics and tiling."""

    ACCURACY_METRIC = records.ACCURACY_METRIC
    # what progressive learning cuts: image views to the phase's patch and batch, the rest to its batch
    SPATIAL_VIEWS = ('lq', 'gt')
    PER_SAMPLE = ('deg_label', 'batch_paths')

    def __init__(self, opt):
        self.compile_networks = pop_compile_option(opt, 'network_g')  # before SRModel builds network_g
        check_network_options(opt['network_g'])  # SRModel's build_network would say only TypeError
        super().__init__(opt)

    def init_training_settings(self):
        """SRModel's (losses, optimizers, schedulers, EMA), the FFT loss, `train.amp` and progressive learning."""
        fft_opt = self.opt['train'].get('fft_opt')
        self.cri_fft = build_loss(fft_opt).to(self.device) if fft_opt else None
        super().init_training_settings()
        self.setup_precision()
        self.progressive = ProgressivePatches.from_options(self.opt)
        self._phase = None

    # ---- restoration -------------------------------------------------------------------------------
    def condition(self, lq):
        """Extra network inputs after the image (none here; VLU-Net adds its degradation vector)."""
        return ()

    def restore(self, net, lq, tile=None, progress=None):
        """Run `net` on `lq` with this model's conditioning, in tiles when `tile` = {size, overlap} is given
        (`progress(done, total)` after each tile)."""
        extra = self.condition(lq)
        if not tile:
            return net(lq, *extra)
        # tiles blend in float32 even under autocast (val.precision)
        return tiled_forward(lambda patch: net(patch, *extra).float(), lq, tile['size'], tile.get('overlap', 32),
                             progress)

    def degradation_probabilities(self, lq):
        """Per-degradation probabilities (B, n) from the model's classifier, or None if it has none."""
        return None

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """BasicSR's load_network, with errors that name the file (torch's own say 'the checkpoint' only)."""
        try:
            super().load_network(net, load_path, strict, param_key)
        except FileNotFoundError:
            raise  # names the file already
        except Exception as error:
            raise RuntimeError(f'cannot load {load_path} into {type(self.get_bare_model(net)).__name__} '
                               f'(path.pretrain_network_*): {type(error).__name__}: {error}') from error

    def feed_data(self, data):
        super().feed_data(data)
        self.deg_label = data['deg_label'].to(self.device) if 'deg_label' in data else None
        self.batch_paths = data.get('lq_path')  # named in errors about this batch

    def compute_losses(self):
        """The training losses of `self.output` against `self.gt`, as an ordered dict of tensors."""
        losses = OrderedDict()
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(self.output, self.gt)
        if self.cri_fft:
            losses['l_fft'] = self.cri_fft(self.output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            if l_percep is not None:
                losses['l_percep'] = l_percep
            if l_style is not None:
                losses['l_style'] = l_style
        return losses

    def check_finite(self, loss, current_iter):
        """Stop with the iteration and the batch's files when the loss is NaN or inf."""
        if not torch.isfinite(loss):
            paths = self.batch_paths
            raise FloatingPointError(f'non-finite loss {loss.item()} at iteration {current_iter}; batch: {paths}. '
                                     'The last checkpoint saved before this iteration is intact.')

    def training_losses(self, current_iter):
        """Run the network on the batch and return its losses (subclasses change what a step computes)."""
        self.output = self.restore(self.net_g, self.lq)
        return self.compute_losses()

    def cut_to_phase(self, current_iter):
        """Progressive learning: the batch cut to this iteration's batch and patch size (nothing without it)."""
        if self.progressive is None:
            return
        phase = self.progressive.phase(current_iter)
        if phase != self._phase:
            get_root_logger().info(f'progressive learning from iteration {current_iter}: batch {phase[0]}, '
                                   f'{phase[1]}-px patches')
            self._phase = phase
        spatial = [name for name in self.SPATIAL_VIEWS if getattr(self, name, None) is not None]
        cut, per_sample = self.progressive.cut(current_iter, [getattr(self, name) for name in spatial],
                                               [getattr(self, name, None) for name in self.PER_SAMPLE])
        for name, value in zip(spatial + list(self.PER_SAMPLE), cut + per_sample):
            setattr(self, name, value)

    def optimize_parameters(self, current_iter):
        self.cut_to_phase(current_iter)
        self.optimizer_g.zero_grad()
        with self.train_autocast():  # the forward, the conditioning and the losses; backward runs outside
            losses = self.training_losses(current_iter)
            total = sum(losses.values())
        self.check_finite(total, current_iter)
        self.backward_and_step(total, self.optimizer_g)
        self.log_dict = self.reduce_loss_dict(losses)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    def test(self):
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self.net_g
        was_training = net.training
        net.eval()
        with torch.no_grad(), self.eval_autocast():
            self.output = self.restore(net, self.lq, self.opt.get('val', {}).get('tile')).float()
        net.train(was_training)

    # ---- validation ----------------------------------------------------------------------------------
    def _initialize_best_metric_results(self, dataset_name):
        super()._initialize_best_metric_results(dataset_name)
        self.best_metric_results[dataset_name].setdefault(self.ACCURACY_METRIC,
                                                          dict(better='higher', val=float('-inf'), iter=-1))

    def variant(self):
        """A few words that set this run apart from others of the same network in reports, or None."""
        return None

    def _write_run_info(self, folder):
        """run.json: what produced the records (reports label runs with it)."""
        records.write_run_info(folder, {'name': self.opt['name'], 'model_type': self.opt['model_type'],
                                        'network': self.opt.get('network_g', {}).get('type'),
                                        'variant': self.variant()})

    def _records_dir(self):
        """Where this run's records go: experiments/<name> when training, results/<name> when testing."""
        return self.opt['path']['experiments_root' if self.opt['is_train'] else 'results_root']

    def _save_image(self, img, dataset_name, img_name, current_iter, tag=None):
        if tag is None:
            tag = current_iter if self.opt['is_train'] else (self.opt['val'].get('suffix') or self.opt['name'])
        imwrite(img, osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{tag}.png'))

    def _metric_values(self, output, gt):
        """Every `val.metrics` entry for one image: float RGB for `takes_float` metrics, uint8 BGR otherwise."""
        values = {}
        uint8_data = {'img': tensor2img([output]), 'img2': tensor2img([gt])}
        float_data = {'img': output[0].clamp(0, 1).permute(1, 2, 0).double().numpy(),
                      'img2': gt[0].clamp(0, 1).permute(1, 2, 0).double().numpy()}
        for name, metric_opt in self.opt['val']['metrics'].items():
            fn = METRIC_REGISTRY.get(metric_opt['type'])
            data = float_data if getattr(fn, 'takes_float', False) else uint8_data
            values[name] = calculate_metric(data, metric_opt)
        return values

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        val_opt = self.opt['val']
        with_metrics = val_opt.get('metrics') is not None
        crop = val_opt.get('crop_to_multiple')
        sums, count, correct, labelled, predictions = {}, 0, 0, 0, []
        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            if crop:
                self.lq = center_crop_to_multiple(self.lq, crop)
                if hasattr(self, 'gt'):
                    self.gt = center_crop_to_multiple(self.gt, crop)
            self.test()
            output = self.output.detach().cpu()
            if save_img:
                self._save_image(tensor2img([output]), dataset_name, img_name, current_iter)
                if not self.opt['is_train']:  # inputs next to outputs, for side-by-side reports
                    self._save_image(tensor2img([self.lq.detach().cpu()]), dataset_name, img_name, None, 'lq')
                    if hasattr(self, 'gt'):
                        self._save_image(tensor2img([self.gt.detach().cpu()]), dataset_name, img_name, None, 'gt')
            if with_metrics and hasattr(self, 'gt'):
                for name, value in self._metric_values(output, self.gt.detach().cpu()).items():
                    sums[name] = sums.get(name, 0.0) + value
            if self.deg_label is not None:
                with torch.no_grad():
                    probs = self.degradation_probabilities(self.lq)
                if probs is not None:
                    predicted = int(probs.argmax(dim=1)[0])
                    label = int(self.deg_label[0])
                    correct += int(predicted == label)
                    labelled += 1
                    predictions.append((current_iter, dataset_name, img_name, label, predicted))
            count += 1
            for attr in ('lq', 'gt', 'output'):
                if hasattr(self, attr):
                    delattr(self, attr)
        if count == 0:
            raise ValueError(f'validation set {dataset_name!r} is empty')

        self.metric_results = {name: total / count for name, total in sums.items()}
        if labelled:
            self.metric_results[self.ACCURACY_METRIC] = correct / labelled
        if not self.metric_results:
            return
        self._initialize_best_metric_results(dataset_name)
        for name, value in self.metric_results.items():
            self._update_best_metric_result(dataset_name, name, value, current_iter)
        self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        folder = self._records_dir()
        self._write_run_info(folder)
        records.append_metrics(folder, current_iter, dataset_name, self.metric_results)
        records.append_predictions(folder, predictions)
        get_root_logger().debug(f'validation records written to {folder}')
