"""C{python -m agw.config}: print the JSON Schema of agw's config (the file agw ships as C{agw/config/agw.schema.json})."""

import json
import sys

from agw.config._shape import json_schema

sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
