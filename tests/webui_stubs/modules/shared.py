"""``modules.shared``: command-line options, settings, the job state and the upscaler list."""

import argparse
import os
import sys
import time

from modules import paths

models_path = paths.models_path
device = "cpu"
progress_print_out = sys.stdout
sd_upscalers = []

cmd_opts = argparse.Namespace(no_half=False, lowvram=False, medvram=False, use_cpu=["all"], resshift_models_path=None)


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None):
        self.default = default
        self.label = label
        self.component = component
        self.component_args = component_args
        self.section = section
        self.comment_after = ""

    def info(self, text):
        self.comment_after += f"({text})"
        return self


class Options:
    """Values set by the user win over registered defaults; unknown keys raise AttributeError (as the WebUI's)."""

    def __init__(self):
        object.__setattr__(self, "data", {"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})
        object.__setattr__(self, "data_labels", {})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


opts = Options()


class State:
    def __init__(self):
        self.begin()
        self.job_count = 0

    def begin(self, job="(unknown)"):
        self.job = job
        self.job_no = 0
        self.job_count = -1
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.textinfo = None
        self.current_image = None
        self.time_start = time.time()
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S")

    def assign_current_image(self, image):
        self.current_image = image

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def end(self):
        self.job_count = 0


state = State()


def walk_files(path, allowed_extensions=None):
    if not os.path.exists(path):
        return
    for root, _, files in os.walk(path, followlinks=True):
        for name in sorted(files):
            if allowed_extensions is None or os.path.splitext(name)[1].lower() in allowed_extensions:
                yield os.path.join(root, name)
