"""The `swiftops` command line: thin click commands over the layers below."""
