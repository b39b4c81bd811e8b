"""``modules.modelloader``: the model-folder walk, the downloader and the upscaler list."""

import os
import urllib.error

from modules import shared

download_attempts = []  # (url, model_dir, file_name) of every call, for the tests
remote_files = {}  # url -> bytes that a "download" writes; any other url fails like an offline machine


def load_file_from_url(url, *, model_dir, progress=True, file_name=None, hash_prefix=None):
    download_attempts.append((url, model_dir, file_name))
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.abspath(os.path.join(model_dir, file_name or os.path.basename(url)))
    if not os.path.exists(path):
        if url not in remote_files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        with open(path, "wb") as handle:
            handle.write(remote_files[url])
    return path


def load_models(model_path, model_url=None, command_path=None, ext_filter=None, download_name=None,
                ext_blacklist=None, hash_prefix=None):
    places = []
    if command_path is not None and command_path != model_path and os.path.exists(command_path):
        places.append(command_path)
    places.append(model_path)
    output = []
    for place in places:
        for path in shared.walk_files(place, allowed_extensions=ext_filter):
            if path not in output:
                output.append(path)
    if model_url is not None and not output:
        output.append(model_url)
    return output


def load_upscalers():
    from modules.upscaler import Upscaler

    data = []
    for cls in Upscaler.__subclasses__():
        command_path = vars(shared.cmd_opts).get(f"{cls.__name__.lower().replace('upscaler', '')}_models_path")
        scaler = cls(command_path)
        scaler.user_path = command_path
        scaler.model_download_path = command_path or scaler.model_path
        data += scaler.scalers
    shared.sd_upscalers = data
