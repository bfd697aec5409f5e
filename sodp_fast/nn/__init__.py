"""Networks: the conditional 1-D U-Net noise model."""
