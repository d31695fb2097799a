"""``api_call``: procedural single-call tasks over invented API functions, judged by the call alone.

Each task shows one to three function schemas (the right one among distractors)
and a request whose values must go into the call's arguments: the skill BFCL's
simple and multiple categories test, on functions of our own (BFCL's are held out).
"""

from __future__ import annotations

from .builtin_envs import SchemaTools
from .environments import EnvTask, environment


def _param(kind: str, description: str, enum: list | None = None) -> dict:
    spec = {"type": kind, "description": description}
    return spec | ({"enum": enum} if enum else {})


CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Denver", "Seoul", "Nairobi"]
LANGUAGES = ["French", "Spanish", "German", "Japanese"]
CUISINES = ["Italian", "Thai", "Mexican", "Indian"]
# name, description, {param: (type, description, draw)}, required, request phrasings
TEMPLATES = [
    ("get_weather", "Get the current weather of a city.",
     {"city": ("string", "the city name", CITIES), "unit": ("string", "celsius or fahrenheit", ["celsius", "fahrenheit"])},
     ["city"], ["What's the weather in {city} in {unit}?", "Tell me the weather in {city}, in {unit}."]),
    ("convert_currency", "Convert an amount of money between currencies.",
     {"amount": ("number", "the amount to convert", [12.5, 40.0, 99.99, 250.0]),
      "from_currency": ("string", "currency code to convert from", ["USD", "EUR", "JPY"]),
      "to_currency": ("string", "currency code to convert to", ["GBP", "CHF", "CAD"])},
     ["amount", "from_currency", "to_currency"], ["Convert {amount} {from_currency} to {to_currency}."]),
    ("calculate_bmi", "Calculate the body mass index.",
     {"weight_kg": ("number", "weight in kilograms", [55, 70, 82, 95]), "height_m": ("number", "height in metres", [1.6, 1.75, 1.82])},
     ["weight_kg", "height_m"], ["What is the BMI of someone who weighs {weight_kg} kg and is {height_m} m tall?"]),
    ("find_restaurants", "Find restaurants near a location.",
     {"location": ("string", "city to search in", CITIES), "cuisine": ("string", "type of food", CUISINES),
      "max_results": ("integer", "how many results", [3, 5, 10])},
     ["location", "cuisine"], ["Find {max_results} {cuisine} restaurants in {location}.", "Show me {max_results} {cuisine} places to eat in {location}."]),
    ("get_stock_price", "Get the latest price of a stock.",
     {"ticker": ("string", "the stock symbol", ["AAPL", "TSLA", "NVDA", "IBM"])},
     ["ticker"], ["What is the stock price of {ticker}?", "Get me the latest {ticker} share price."]),
    ("compound_interest", "Calculate compound interest on an investment.",
     {"principal": ("integer", "initial amount", [1000, 5000, 20000]), "rate": ("number", "yearly interest rate as a fraction", [0.03, 0.05, 0.07]),
      "years": ("integer", "number of years", [2, 5, 10])},
     ["principal", "rate", "years"], ["How much interest does {principal} earn at a rate of {rate} over {years} years?"]),
    ("translate_text", "Translate a text into another language.",
     {"text": ("string", "the text to translate", ["good morning", "thank you", "where is the station"]),
      "target_language": ("string", "language to translate into", LANGUAGES)},
     ["text", "target_language"], ["Translate '{text}' into {target_language}."]),
    ("set_timer", "Start a countdown timer.",
     {"minutes": ("integer", "length of the timer in minutes", [3, 10, 25, 45])},
     ["minutes"], ["Set a timer for {minutes} minutes.", "Start a {minutes} minute timer."]),
    ("get_population", "Get the population of a country in a given year.",
     {"country": ("string", "the country", ["Peru", "Kenya", "Norway", "Japan"]), "year": ("integer", "the year", [1990, 2000, 2020])},
     ["country", "year"], ["What was the population of {country} in {year}?"]),
    ("circle_area", "Calculate the area of a circle.",
     {"radius": ("integer", "the radius of the circle", [2, 7, 12, 30])},
     ["radius"], ["Find the area of a circle with a radius of {radius}.", "What is the area of a circle of radius {radius}?"]),
    ("book_flight", "Book a flight between two cities on a date.",
     {"origin": ("string", "departure city", CITIES), "destination": ("string", "arrival city", CITIES),
      "date": ("string", "travel date, YYYY-MM-DD", ["2024-05-01", "2024-07-15", "2024-12-24"])},
     ["origin", "destination", "date"], ["Book a flight from {origin} to {destination} on {date}."]),
]


def _schema(template) -> dict:
    name, description, params, required, _ = template
    properties = {key: _param(kind, text) for key, (kind, text, _) in params.items()}
    return {"name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


@environment("api_call")
class ApiCall(SchemaTools):
    """Schema-only tools drawn from ``TEMPLATES``; the outcome is the call matching the request."""

    @classmethod
    def make_task(cls, rng) -> EnvTask:
        picked = rng.sample(TEMPLATES, rng.randint(1, 3))
        target = picked[0]
        name, _, params, required, phrasings = target
        values = {key: rng.choice(draw) for key, (_, _, draw) in params.items()}
        phrasing = rng.choice(phrasings)
        expected = {  # a parameter the request does not mention must be left out
            key: ([value] + ([] if key in required else [""])) if f"{{{key}}}" in phrasing else [""]
            for key, value in values.items()
        }
        question = phrasing.format(**values)
        functions = [_schema(template) for template in rng.sample(picked, len(picked))]
        calls = [{"name": name, "arguments": expected}]
        return EnvTask(question, {"functions": functions, "expected_calls": calls}, None, calls)
