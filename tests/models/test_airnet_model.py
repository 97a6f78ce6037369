"""AirNetModel: the encoder-only warm-up phase, then L1 + InfoNCE, on in-memory batches."""
import pytest
import torch
from basicsr.models import build_model

AIRNET = {'type': 'AirNet', 'num_feat': 8, 'num_groups': 1, 'num_blocks': 1, 'encoder_dims': [8, 8, 16],
          'queue_size': 8}


def airnet_model(tmp_path, warmup=1):
    opt = {
        'name': 'airnet_unit', 'model_type': 'AirNetModel', 'num_gpu': 0, 'is_train': True, 'dist': False,
        'scale': 1, 'network_g': dict(AIRNET),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None,
                 'experiments_root': str(tmp_path), 'models': str(tmp_path), 'training_states': str(tmp_path)},
        'train': {'ema_decay': 0, 'encoder_warmup_iter': warmup,
                  'optim_g': {'type': 'Adam', 'lr': 1e-3}, 'scheduler': {'type': 'MultiStepLR', 'milestones': [100],
                                                                         'gamma': 0.1},
                  'total_iter': 4, 'pixel_opt': {'type': 'L1Loss', 'loss_weight': 1.0},
                  'contrastive_opt': {'type': 'InfoNCELoss', 'loss_weight': 0.1}},
        'val': {'metrics': None},
    }
    return build_model(opt)


def batch(with_key=True):
    torch.manual_seed(0)
    data = {'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 16, 16), 'lq_path': ['a', 'b']}
    if with_key:
        data['lq_key'] = torch.rand(2, 3, 16, 16)
    return data


def test_warmup_trains_the_encoder_only_then_both(tmp_path):
    model = airnet_model(tmp_path, warmup=1)
    net = model.get_bare_model(model.net_g)
    model.feed_data(batch())
    model.optimize_parameters(1)
    assert set(model.log_dict) == {'l_contrast'}
    assert all(p.grad is None for p in net.R.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.E.parameters())

    model.feed_data(batch())
    model.optimize_parameters(2)
    assert set(model.log_dict) == {'l_pix', 'l_contrast'}
    assert all(p.grad is not None for p in net.R.parameters())


def test_missing_key_view_names_the_option(tmp_path):
    model = airnet_model(tmp_path)
    model.feed_data(batch(with_key=False))
    with pytest.raises(KeyError, match='key_view: true'):
        model.optimize_parameters(1)


def test_test_uses_the_query_path_in_eval_mode(tmp_path):
    model = airnet_model(tmp_path)
    model.feed_data(batch())
    model.test()
    assert model.output.shape == (2, 3, 16, 16)
    assert model.get_bare_model(model.net_g).training  # back in training mode afterwards
