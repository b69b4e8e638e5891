"""Looking inside a network: gradients per layer, attributions (Captum), activations and filters as plots."""
