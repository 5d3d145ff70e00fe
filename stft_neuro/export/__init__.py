"""Deployment artifacts: the bundle (``bundle.py``) and the host side as ONNX graphs (``onnx_host.py``)."""
