"""Dagster definitions, one package per domain; ``bg_ops.definitions`` loads them all."""
