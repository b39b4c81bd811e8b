"""Stand-in of ``comfy.model_patcher.ModelPatcher``: holds a network and the devices it moves between."""

from . import model_management


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size or model_management.module_size(model)

    def model_size(self):
        return self.size

    def patch_model(self, device_to=None):
        if device_to is not None:
            self.model.to(device_to)
        return self.model

    def detach(self):
        self.model.to(self.offload_device)
        return self.model
