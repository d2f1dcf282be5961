"""Generic visual text queries: what people type into an image search box.

Used to tune an image index on text queries (cross-modal recall) when a collection has too few texts of
its own to tune on. Everyday subjects, scenes and attributes; no collection-specific words.
"""

_SUBJECTS = (
    "a dog", "a cat", "a bird", "a horse", "a cow", "a fish", "an insect", "a butterfly", "a bear", "an elephant",
    "a car", "a red car", "a bus", "a truck", "a bicycle", "a motorcycle", "a train", "an airplane", "a boat", "a ship",
    "a house", "a building", "a bridge", "a church", "a tower", "a castle", "a lighthouse", "a street", "a city at night",
    "a kitchen", "a bedroom", "an office", "a shop", "a restaurant", "a garden", "a park", "a playground",
    "a beach", "the sea", "a lake", "a river", "a waterfall", "mountains", "a forest", "a desert", "snow", "a field",
    "a sunset", "clouds", "the night sky", "the moon", "a flower", "roses", "a tree", "autumn leaves", "grass",
    "a person", "a child", "a baby", "a woman", "a man", "a group of people", "a crowd", "a portrait", "a smiling face",
    "food on a plate", "a pizza", "a cake", "fruit", "an apple", "a banana", "vegetables", "bread", "a cup of coffee",
    "a glass of wine", "a bottle", "a chair", "a table", "a sofa", "a bed", "a lamp", "a clock", "a computer",
    "a phone", "a keyboard", "a camera", "a book", "a guitar", "a piano", "a ball", "a toy", "a hat", "shoes",
    "a dress", "a bag", "glasses", "a watch", "a key", "a knife", "tools", "a painting", "a drawing", "a map",
    "a flag", "a sign", "text on a page", "a logo", "a diagram", "a cartoon", "an icon", "a sculpture", "a window",
    "a door", "stairs", "a road", "traffic", "a parking lot", "an airport", "a station", "a stadium", "a concert",
)
PROBE_TEXTS = tuple(_SUBJECTS) + tuple(f"a photo of {s}" for s in _SUBJECTS[:40])
