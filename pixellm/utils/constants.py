"""Token constants shared by the chat templates, the datasets and the model (LLaVA conventions)."""
# Label value ignored by the cross-entropy loss (prompt, image and padding positions).
IGNORE_INDEX = -100
# Placeholder id that the chat template writes where the image features go; never a vocab id.
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = '<image>'
DEFAULT_IM_START_TOKEN = '<im_start>'
DEFAULT_IM_END_TOKEN = '<im_end>'
# Placeholder for one target in dataset answers (MUSE ``text_answers``); expanded to codebook tokens.
SEG_PLACEHOLDER = '{seg}'
