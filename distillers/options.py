"""A method's options: a frozen ``MethodOptions`` dataclass of ``option`` fields, the idiom
every flag of the toolbox shares (helper/core/option_groups.py)."""
from helper.core.option_groups import (MethodOptions, add_options, declaring_classes,  # noqa: F401
                                  flag_names, group_titles, option, options_from, require)
