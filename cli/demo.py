"""`comfy-int8 demo`: not built yet (see the issues)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("comfy-int8 demo is not implemented yet.")
    return 1
