"""How the plugin hooks into BasicSR: importing it changes nothing of BasicSR's; `patch_basicsr()` is explicit."""
import subprocess
import sys

CHECK = r'''
import importlib, json, sys
import {module}
import torch
import basicsr.data.data_sampler as sampler, basicsr.models.base_model as base_model
import basicsr.models.sr_model as sr_model, basicsr.utils.options as options, basicsr.train as train
import basicsr.archs as archs
own = {{
    'EnlargedSampler.__iter__': sampler.EnlargedSampler.__iter__.__module__ == 'basicsr.data.data_sampler',
    'EnlargedSampler.set_epoch': sampler.EnlargedSampler.set_epoch.__module__ == 'basicsr.data.data_sampler',
    'base_model.torch': base_model.torch is torch,
    'BaseModel.save_training_state': base_model.BaseModel.save_training_state.__module__ == 'basicsr.models.base_model',
    'BaseModel.get_optimizer': base_model.BaseModel.get_optimizer.__module__ == 'basicsr.models.base_model',
    'sr_model.build_network': sr_model.build_network is archs.build_network
                              and archs.build_network.__module__ == 'basicsr.archs',
    'options.ordered_yaml': options.ordered_yaml.__module__ == 'basicsr.utils.options',
    'train.load_resume_state': train.load_resume_state.__module__ == 'basicsr.train',
    'train.EnlargedSampler': train.EnlargedSampler is sampler.EnlargedSampler,
}}
import vlu_plugin
registered = 'VLUNet' in __import__('basicsr.utils.registry', fromlist=['x']).ARCH_REGISTRY
vlu_plugin.patch_basicsr()
first = (options.ordered_yaml, train.parse_options, train.create_train_val_dataloader)
vlu_plugin.patch_basicsr()
print(json.dumps({{'own': own, 'registered': registered,
                  'patched': options.ordered_yaml.__module__ == 'vlu_plugin.utils.patches'
                             and train.EnlargedSampler.__name__ == 'ResumableSampler'
                             and issubclass(train.EnlargedSampler, sampler.EnlargedSampler),
                  'idempotent': first == (options.ordered_yaml, train.parse_options,
                                          train.create_train_val_dataloader)}}))
'''


def test_importing_the_plugin_leaves_basicsr_its_own_and_patch_basicsr_is_explicit():
    import json
    # a submodule imports the package too: one fresh process checks both
    out = subprocess.run([sys.executable, '-c', CHECK.format(module='vlu_plugin.data.tasks')], capture_output=True,
                         text=True, timeout=180, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert all(result['own'].values()), result['own']
    assert result['registered'] and result['patched'] and result['idempotent'], result
