AlwaysVisible = object()


class Script:
    def title(self):
        raise NotImplementedError

    def show(self, is_img2img):
        return True
