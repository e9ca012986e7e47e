"""The Kivy layer: screens that draw what the pure modules compute. Import it only after ``main`` set up Kivy."""
