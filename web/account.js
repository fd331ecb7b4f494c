// account page
