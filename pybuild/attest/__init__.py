"""Supply-chain attestations: an SPDX SBOM and SLSA provenance, stored as BuildKit stores them."""
