"""`ckptkit publish DIR`: a component set validated, given a model card (card.py) and uploaded
to the Hugging Face Hub (publish.py)."""
