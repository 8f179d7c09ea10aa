# SPDX-License-Identifier: Apache-2.0
"""BIDS naming patterns and metadata rules, as data."""
