"""One module per model; each class is named by `_target_` in conf/model/<name>.yaml."""
