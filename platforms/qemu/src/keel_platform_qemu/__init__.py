"""Keel's QEMU platform: qcow2 images, serial console, first-boot config from fw_cfg."""
