"""Install pixellm: ``pip install -e .[tests]`` (the Makefile does it inside ``.venv``)."""
import os.path as osp

from setuptools import find_packages, setup


def read_requirements(name):
    path = osp.join(osp.dirname(osp.abspath(__file__)), 'requirements', name)
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith('#')]


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(osp.abspath(__file__)), 'pixellm', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


setup(
    name='pixellm',
    version=read_version(),
    description='PixelLM (CVPR 2024) as a plugin-based segmentation toolbox on OpenMMLab mmengine',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['pixellm', 'pixellm.*']),
    include_package_data=True,
    # The shipped configs (``configs/`` links to ``pixellm/configs``) travel with the package, so
    # ``--deepspeed zero2`` and a plugin's ``from pixellm.configs... import *`` work after
    # ``pip install .``.
    package_data={'pixellm': ['text/tokenizers/assets/*.json', 'datasets/metainfo/*',
                              'configs/*/*.py', 'configs/*/*/*.py', 'configs/*/*.json',
                              'configs/*/*.md']},
    python_requires='>=3.9',
    install_requires=read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt'), 'web': read_requirements('web.txt')},
)
