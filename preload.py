"""WebUI preload hook: the ``--resshift-models-path`` command-line option.

The WebUI passes ``vars(cmd_opts)["resshift_models_path"]`` to ``UpscalerResShift`` (the option name is derived from
the class name), so it must be spelled exactly so.
"""

import os


def preload(parser):
    from modules import paths

    parser.add_argument("--resshift-models-path", type=str, default=os.path.join(paths.models_path, "ResShift"),
                        help="folder with the ResShift model files (official names, e.g. resshift_realsrx4_s4_v3.pth "
                             "and autoencoder_vq_f4.pth)")
