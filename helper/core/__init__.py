"""The leaves every layer imports (models/, dataset/, distillers/ and the rest of helper/):
``UserError``, argparse number types, reading and writing weight files, options declared as
dataclasses, the loader of a user's own code. They import nothing else of the toolbox."""
