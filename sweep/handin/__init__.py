"""The student's hand-in: the zip of code, report and agent (bundle.py), and `mnist.py`, the
standalone training script that goes into it (only torch and torchvision; it imports nothing of
this project).

bundle.py may import every package of the sweep but cli.
"""
