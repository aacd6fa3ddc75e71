"""A suite of JSON Schemas in the shapes real APIs use, for the grammar bench and tests.

Each entry is (name, schema, prompt). The bench times the former hand-written engine on the
schemas it could compile (no pattern, format, bounds, allOf, recursion or tuples).
"""

from __future__ import annotations

STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}


def obj(properties: dict, required: list | None = None, extra: bool = False, **more) -> dict:
    schema = {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
              "additionalProperties": extra}
    schema.update(more)
    return schema


ADDRESS = obj({"street": STR, "city": STR, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})
TREE = {"$defs": {"node": obj({"value": INT, "children": {"type": "array", "items": {"$ref": "#/$defs/node"},
                                                            "maxItems": 2}})}, "$ref": "#/$defs/node"}

SCHEMAS: list[tuple[str, dict, str]] = [
    ("person", obj({"name": STR, "age": INT}), "Describe a person."),
    ("person_optional", obj({"name": STR, "age": INT, "email": STR}, ["name"]), "Describe a person."),
    ("person_bounds", obj({"name": {"type": "string", "minLength": 2, "maxLength": 20},
                           "age": {"type": "integer", "minimum": 0, "maximum": 130}}), "Describe a person."),
    ("email_format", obj({"email": {"type": "string", "format": "email"}}), "Give an email address."),
    ("date_format", obj({"date": {"type": "string", "format": "date"}}), "Give today's date."),
    ("datetime_format", obj({"when": {"type": "string", "format": "date-time"}}), "When is the meeting?"),
    ("uuid_format", obj({"id": {"type": "string", "format": "uuid"}}), "Make an identifier."),
    ("ipv4_format", obj({"ip": {"type": "string", "format": "ipv4"}}), "Give an IP address."),
    ("pattern_phone", obj({"phone": {"type": "string", "pattern": "^\\+?[0-9]{3}-[0-9]{3}-[0-9]{4}$"}}),
     "Give a phone number."),
    ("pattern_code", obj({"code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}}), "Make a product code."),
    ("enum_color", obj({"color": {"enum": ["red", "green", "blue"]}}), "Pick a color."),
    ("const_version", obj({"version": {"const": 2}, "name": STR}), "Name a release."),
    ("number_range", obj({"temperature": {"type": "number", "minimum": -50, "maximum": 60}}), "Weather today?"),
    ("exclusive_range", obj({"score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}),
     "Rate it."),
    ("integer_multiple", obj({"count": {"type": "integer", "minimum": 0, "maximum": 1000}}), "How many?"),
    ("boolean_flags", obj({"active": BOOL, "admin": BOOL}), "Describe an account."),
    ("nullable", obj({"nickname": {"type": ["string", "null"]}}), "A nickname?"),
    ("anyof_union", obj({"value": {"anyOf": [INT, STR]}}), "Give a value."),
    ("oneof_shapes", obj({"shape": {"oneOf": [obj({"kind": {"const": "circle"}, "radius": NUM}),
                                               obj({"kind": {"const": "square"}, "side": NUM})]}}), "Describe a shape."),
    ("allof_merge", {"allOf": [obj({"name": STR}, extra=True), {"type": "object", "properties": {"age": INT},
                                                                  "required": ["age"]}]}, "Describe a person."),
    ("string_array", obj({"tags": {"type": "array", "items": STR}}), "Tag this post."),
    ("bounded_array", obj({"scores": {"type": "array", "items": INT, "minItems": 2, "maxItems": 4}}), "Scores?"),
    ("unique_strings", obj({"words": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 5}}),
     "Some words."),
    ("tuple_point", obj({"point": {"type": "array", "prefixItems": [NUM, NUM], "items": False}}), "A point."),
    ("tuple_record", {"type": "array", "prefixItems": [STR, INT, BOOL], "items": False}, "A record."),
    ("nested_address", obj({"name": STR, "address": ADDRESS}), "Where do you live?"),
    ("array_of_objects", obj({"items": {"type": "array", "items": obj({"sku": STR, "qty": INT}), "maxItems": 3}}),
     "An order."),
    ("defs_ref", {"$defs": {"money": obj({"amount": NUM, "currency": {"enum": ["EUR", "USD"]}})},
                  **obj({"price": {"$ref": "#/$defs/money"}, "tax": {"$ref": "#/$defs/money"}})}, "A price."),
    ("recursive_tree", TREE, "A small tree."),
    ("recursive_comment", {"$defs": {"c": obj({"text": STR, "replies": {"type": "array", "items": {"$ref": "#/$defs/c"},
                                                                          "maxItems": 1}}, ["text"])},
                           "$ref": "#/$defs/c"}, "A comment thread."),
    ("free_object", {"type": "object"}, "Any object."),
    ("map_of_ints", {"type": "object", "additionalProperties": INT}, "Counts by word."),
    ("pydantic_user", {"title": "User", "type": "object", "properties": {
        "id": {"title": "Id", "type": "integer"}, "name": {"title": "Name", "type": "string"},
        "tags": {"title": "Tags", "type": "array", "items": {"type": "string"}, "default": []}},
        "required": ["id", "name"]}, "A user."),
    ("openai_weather_args", obj({"location": {"type": "string", "description": "City and country"},
                                 "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}), "Weather in Paris?"),
    ("sentiment", obj({"label": {"enum": ["positive", "negative", "neutral"]},
                       "confidence": {"type": "number", "minimum": 0, "maximum": 1}}), "Sentiment of 'great'?"),
    ("ner_entities", obj({"entities": {"type": "array", "items": obj({"text": STR, "type": {
        "enum": ["PERSON", "ORG", "LOC"]}}), "maxItems": 4}}), "Entities in 'Ada works at IBM'."),
    ("classification_multi", obj({"labels": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1,
                                             "maxItems": 3}}), "Labels?"),
    ("qa_with_evidence", obj({"answer": STR, "evidence": {"type": "array", "items": INT, "maxItems": 3}}),
     "Answer with evidence."),
    ("product", obj({"name": STR, "price": {"type": "number", "minimum": 0}, "in_stock": BOOL,
                     "categories": {"type": "array", "items": STR, "maxItems": 3}}), "A product."),
    ("event", obj({"title": STR, "start": {"type": "string", "format": "date-time"},
                   "attendees": {"type": "array", "items": {"type": "string", "format": "email"}, "maxItems": 2}}),
     "An event."),
    ("invoice", obj({"number": {"type": "string", "pattern": "^INV-[0-9]{4}$"},
                     "lines": {"type": "array", "items": obj({"desc": STR, "amount": NUM}), "minItems": 1,
                               "maxItems": 2},
                     "total": NUM}), "An invoice."),
    ("geojson_point", obj({"type": {"const": "Point"}, "coordinates": {
        "type": "array", "prefixItems": [{"type": "number", "minimum": -180, "maximum": 180},
                                         {"type": "number", "minimum": -90, "maximum": 90}], "items": False}}),
     "A GeoJSON point."),
    ("semver", obj({"version": {"type": "string", "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"}}), "A version."),
    ("hex_color", obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}), "A colour."),
    ("short_strings", obj({"a": {"type": "string", "maxLength": 3}, "b": {"type": "string", "minLength": 4,
                                                                            "maxLength": 6}}), "Two strings."),
    ("integer_negative", obj({"offset": {"type": "integer", "maximum": -1}}), "A negative offset."),
    ("deep_nesting", obj({"a": obj({"b": obj({"c": obj({"d": INT})})})}), "Nested."),
    ("matrix", obj({"rows": {"type": "array", "items": {"type": "array", "items": INT, "minItems": 2, "maxItems": 2},
                             "minItems": 2, "maxItems": 2}}), "A 2x2 matrix."),
    ("top_level_array", {"type": "array", "items": obj({"k": STR, "v": INT}), "maxItems": 3}, "Pairs."),
    ("top_level_enum", {"enum": ["yes", "no", "maybe"]}, "Yes or no?"),
    ("top_level_string", {"type": "string", "maxLength": 30}, "A name."),
    ("top_level_integer", {"type": "integer", "minimum": 1, "maximum": 10}, "A number from 1 to 10."),
    ("mixed_enum", obj({"v": {"enum": [1, "one", None, True]}}), "One?"),
    ("tool_args_search", obj({"query": {"type": "string", "minLength": 1}, "limit": {"type": "integer", "minimum": 1,
                                                                                      "maximum": 50}}, ["query"]),
     "Search for cats."),
    ("recipe", obj({"title": STR, "servings": {"type": "integer", "minimum": 1, "maximum": 12},
                    "ingredients": {"type": "array", "items": obj({"item": STR, "grams": {"type": "number",
                                                                                         "minimum": 0}}),
                                    "minItems": 1, "maxItems": 3}}), "A recipe."),
]
