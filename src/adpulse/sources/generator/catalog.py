"""The generator's fixed vocabulary: what a synthetic advertiser's world is made of.

Platforms, US cities, interests and genders with their mixes; campaign themes and the
products their ads advertise; the original's sample ads and users (always present, with
their exact values); the id ranges of ads, users and products; the share of traffic per
UTC hour; the ISO-8601 offsets some records carry. Plain data, kept apart from the code
that draws from it so that the world can be read (and changed) in one place.
"""

from __future__ import annotations

from datetime import date
from typing import Final

import numpy as np

PLATFORMS: Final = ("Web", "Mobile", "Tablet")
PLATFORM_MIX: Final = (0.40, 0.50, 0.10)

#: Twenty US cities; weights roughly follow metro population.
LOCATIONS: Final = (
    "New York",
    "Los Angeles",
    "Chicago",
    "Houston",
    "Phoenix",
    "Philadelphia",
    "San Antonio",
    "San Diego",
    "Dallas",
    "San Jose",
    "Austin",
    "Jacksonville",
    "San Francisco",
    "Columbus",
    "Seattle",
    "Denver",
    "Boston",
    "Miami",
    "Atlanta",
    "Portland",
)
LOCATION_WEIGHTS: Final = (
    19.5, 13.0, 9.4, 7.1, 4.9, 6.2, 2.6, 3.3, 7.6, 2.0,
    2.3, 1.6, 4.7, 2.1, 4.0, 3.0, 4.9, 6.1, 6.1, 2.5,
)  # fmt: skip

INTERESTS: Final = (
    "Music",
    "Travel",
    "Reading",
    "Photography",
    "Gaming",
    "Cooking",
    "Sports",
    "Fitness",
    "Fashion",
    "Technology",
    "Movies",
    "Outdoors",
    "Art",
    "Finance",
    "Pets",
)
INTEREST_WEIGHTS: Final = (
    1.6, 1.4, 1.0, 0.7, 1.2, 1.1, 1.3, 1.1, 0.9, 1.2, 1.3, 0.8, 0.6, 0.5, 0.9,
)  # fmt: skip

GENDERS: Final = ("Male", "Female", "Non-binary")
GENDER_MIX: Final = (0.485, 0.485, 0.03)

#: Campaign names and the products their ads advertise (no commas: the CSV is unquoted).
CAMPAIGN_THEMES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("Back-to-School", ("Laptop", "Backpack", "Tablet", "Headphones")),
    ("Summer Sale", ("Smartphone", "Sunglasses", "Sandals", "Swimwear")),
    ("Fall Fashion", ("Jacket", "Boots", "Sweater", "Scarf")),
    ("Holiday Gifts", ("Smartwatch", "Perfume", "Board Game", "Gift Card")),
    ("Black Friday Deals", ("Television", "Laptop", "Game Console", "Soundbar")),
    ("Cyber Monday", ("Smartphone", "Headphones", "Tablet", "E-Reader")),
    ("Spring Refresh", ("Sneakers", "Dress", "Bedding", "Plant Kit")),
    ("New Year Fitness", ("Running Shoes", "Fitness Tracker", "Yoga Mat", "Protein Powder")),
    ("Valentine's Day", ("Jewelry", "Chocolate Box", "Flowers", "Perfume")),
    ("Mother's Day", ("Handbag", "Spa Set", "Flowers", "Jewelry")),
    ("Father's Day", ("Grill", "Watch", "Power Drill", "Golf Set")),
    ("Home Makeover", ("Sofa", "Floor Lamp", "Rug", "Coffee Maker")),
    ("Outdoor Adventure", ("Tent", "Hiking Boots", "Backpack", "Kayak")),
    ("Tech Launch", ("Smartphone", "Wireless Earbuds", "Smart Speaker", "Tablet")),
    ("Winter Warmers", ("Coat", "Gloves", "Space Heater", "Blanket")),
    ("Game Day", ("Television", "Jersey", "Snack Box", "Soundbar")),
    ("Travel Season", ("Suitcase", "Travel Pillow", "Camera", "Sunglasses")),
    ("Beauty Week", ("Skincare Set", "Lipstick", "Hair Dryer", "Perfume")),
    ("Kitchen Essentials", ("Blender", "Cookware Set", "Knife Set", "Coffee Maker")),
    ("Pet Lovers", ("Dog Bed", "Cat Tree", "Pet Food", "Leash")),
    ("Kids Playtime", ("Toy Robot", "Building Blocks", "Scooter", "Puzzle")),
    ("Music Fest", ("Headphones", "Bluetooth Speaker", "Guitar", "Turntable")),
    ("Smart Home", ("Smart Thermostat", "Video Doorbell", "Robot Vacuum", "Smart Bulb")),
    ("Weekend Flash Sale", ("Sneakers", "Smartwatch", "Jacket", "Headphones")),
    ("Labor Day Sale", ("Mattress", "Grill", "Television", "Sofa")),
    ("Memorial Day Sale", ("Mattress", "Patio Set", "Grill", "Cooler")),
    ("Graduation Gifts", ("Laptop", "Watch", "Camera", "Backpack")),
    ("Wedding Season", ("Dress", "Suit", "Jewelry", "Cookware Set")),
    ("Book Lovers", ("E-Reader", "Bestseller Bundle", "Reading Lamp", "Bookshelf")),
    ("Gamer Zone", ("Game Console", "Gaming Chair", "Gaming Headset", "Controller")),
    ("Coffee Lovers", ("Espresso Machine", "Coffee Grinder", "Coffee Beans", "Mug Set")),
    ("Eco Living", ("Solar Charger", "Reusable Bottle", "Compost Bin", "E-Bike")),
    ("Back to Work", ("Office Chair", "Monitor", "Laptop Bag", "Desk Lamp")),
    ("Cozy Nights", ("Blanket", "Candle Set", "Slippers", "Tea Sampler")),
    ("Festival Fashion", ("Sunglasses", "Boots", "Hat", "Dress")),
    ("Anniversary Sale", ("Jewelry", "Watch", "Perfume", "Handbag")),
    ("Clearance Event", ("Jacket", "Sneakers", "Headphones", "Rug")),
    ("Road Trip", ("Dash Cam", "Cooler", "Car Charger", "Travel Pillow")),
    ("Healthy Habits", ("Fitness Tracker", "Blender", "Yoga Mat", "Water Filter")),
    ("Creator Studio", ("Camera", "Microphone", "Ring Light", "Tripod")),
)

#: The original's sample dimension rows, always present with exactly these values.
SAMPLE_ADS: Final = (
    (1001, "Back-to-School", "Laptop", date(2023, 8, 1), date(2023, 10, 31)),
    (1002, "Summer Sale", "Smartphone", date(2023, 7, 15), date(2023, 9, 15)),
    (1003, "Fall Fashion", "Jacket", date(2023, 9, 1), date(2023, 11, 30)),
)
SAMPLE_USERS: Final = (
    ("U1234", 22, "Male", "Music;Travel", "New York", "Web"),
    ("U5678", 30, "Female", "Reading;Photography", "Los Angeles", "Mobile"),
    ("U9101", 27, "Male", "Gaming;Cooking", "San Francisco", "Tablet"),
)

FIRST_AD_ID: Final = 1001
FIRST_USER_NO: Final = 1000
#: Product ids P501.. (the original's ``P501`` is ad 1001's featured product).
FIRST_PRODUCT_NO: Final = 501
PRODUCTS: Final = 200
#: Unknown ids (absent from the dimensions) drawn from small pools, as real strays are.
UNKNOWN_ADS: Final = 20

#: Share of traffic per UTC hour: US evenings (00-04 UTC) peak, US nights are quiet.
DIURNAL: Final = np.array(
    [1.45, 1.40, 1.30, 1.15, 0.95, 0.75, 0.55, 0.45, 0.40, 0.40, 0.45, 0.55,
     0.70, 0.85, 0.95, 1.00, 1.05, 1.10, 1.10, 1.15, 1.20, 1.25, 1.30, 1.40],
    dtype=np.float64,
)  # fmt: skip

#: ISO-8601 offsets used by the share of records that are not in the original format.
ISO_OFFSETS: Final = (
    ("+00:00", 0),
    ("-04:00", -240),
    ("-05:00", -300),
    ("-07:00", -420),
    ("+02:00", 120),
    ("+05:30", 330),
)

#: The platform and city mixes as cumulative distributions (for ``sampling.draw``).
PLATFORM_CDF: Final = np.cumsum(PLATFORM_MIX) / np.sum(PLATFORM_MIX)
LOCATION_CDF: Final = np.cumsum(LOCATION_WEIGHTS) / np.sum(LOCATION_WEIGHTS)
