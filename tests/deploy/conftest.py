import os
import sys

# The deployment tests share their toy models (deploy_helpers.py); pytest runs with
# --import-mode=importlib, which puts no test folder on sys.path.
sys.path.insert(0, os.path.dirname(__file__))
