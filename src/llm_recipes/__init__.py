"""llm-recipes: every stage of a language model's life as a short script and a recipe."""
