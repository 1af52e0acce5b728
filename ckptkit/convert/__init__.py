"""Layouts and the planners that change them.

  components.py     map one component between namings (original / diffusers), load it as a model
  configs.py        a component's config: shipped, given (--config), from shapes, released
  models.py         the diffusers/transformers classes: configs checked, meta models, shapes
  component_set.py  a folder of component files read as one source
  layouts/          one hand-written name map per original layout
  split.py, merge.py, convert.py, trigflow.py   planners: they build engine plans
"""
