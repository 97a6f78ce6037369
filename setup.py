"""Package metadata for vlu_plugin: VLU-Net and all-in-one baselines as a BasicSR plugin."""
from setuptools import find_packages, setup

setup(
    name='vlu_plugin',
    version='0.1.0',
    description='VLU-Net (CVPR 2025) and the all-in-one baselines PromptIR and AirNet inside BasicSR',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'options', 'datasets', 'experiments', 'results', 'tb_logger')),
    # read at run time: the demo's options (`vlu demo`) and the published numbers (`vlu report`)
    package_data={'vlu_plugin': ['options/demo/*.yml', 'options/demo/_shared/*.yml', 'tools/published.yml']},
    python_requires='>=3.9',
    install_requires=[
        'torch',
        'torchvision',
        'basicsr==1.4.2',
        'open_clip_torch',
        'lmdb',
        'opencv-python',
        'pyyaml',
        'addict',
        'scikit-image',  # bundled images for the embedded benchmark; also a BasicSR dependency
        'matplotlib',  # the report's figures (comparison grid, curves, confusion matrix)
    ],
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': ['vlu=vlu_cli:main']},
)
