callbacks_ui_settings = []
callbacks_script_unloaded = []


def on_ui_settings(callback, *, name=None):
    callbacks_ui_settings.append(callback)


def on_script_unloaded(callback, *, name=None):
    callbacks_script_unloaded.append(callback)


def ui_settings_callback():
    for callback in callbacks_ui_settings:
        callback()


def script_unloaded_callback():
    for callback in callbacks_script_unloaded:
        callback()
