"""`comfy-int8 convert`: not built yet (see the issues)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print("comfy-int8 convert is not implemented yet.")
    return 1
