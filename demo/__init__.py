"""The demo's scaffolding, outside the product: the demo world (world), its loopback image server (imageserver),
the sample-data fetcher (sample_data), the closing summary (summary), and the MNIST and synthetic-shape
helpers of the training tests and benchmarks (mnist, synthetic)."""
