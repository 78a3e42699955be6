"""The models: networks with one layer protocol (networks.py) and the Deep RFM (deep_rfm.py, kernels.py)."""
