"""Helpers for the course 'Transfer Learning for Computer Vision with PyTorch'.

Import the topic modules directly (``from course_utils import data, models, train``); importing the
package itself does no work.
"""
__version__ = "0.1.0"
