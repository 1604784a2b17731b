"""Architectures as plain nn.Modules, injected into models from config."""
