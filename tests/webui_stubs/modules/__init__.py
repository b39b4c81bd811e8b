"""Stand-in of the WebUI's ``modules`` package for the extension's contract tests."""
