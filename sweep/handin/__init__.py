"""Files that go into a student's hand-in zip: `mnist.py`, standalone (only torch and torchvision)."""
