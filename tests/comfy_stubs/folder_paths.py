"""Stand-in of ComfyUI's ``folder_paths``: named model folders (a list of paths and a set of extensions each)."""

import os

supported_pt_extensions = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
models_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")  # tests point it at tmp_path
folder_names_and_paths = {}


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    paths, extensions = folder_names_and_paths[folder_name]
    names = set()
    for folder in paths:
        for root, _, files in os.walk(folder, followlinks=True):
            for file_name in files:
                if not extensions or os.path.splitext(file_name)[1].lower() in extensions:
                    names.add(os.path.relpath(os.path.join(root, file_name), folder).replace(os.sep, "/"))
    return sorted(names)


def get_full_path(folder_name, filename):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None
