"""An example Keel platform plugin: "Example Cloud", which boots gzip-compressed raw disks."""
